"""Cross-layer equalisation (Nagel et al., 2019, "Data-Free Quantization").

For ``Conv1 -> f -> Conv2`` with ``f`` positive-homogeneous (``f(x / s) = f(x) / s`` for ``s > 0``:
ReLU, or no op at all), dividing Conv1's output channel ``i`` (weights and bias) by ``s_i`` and
multiplying Conv2's input channel ``i`` by ``s_i`` leaves the float function unchanged. Choosing
``s_i = sqrt(r1_i / r2_i)`` (``r`` = max |w| of the channel in each layer) gives both layers the same
per-channel range, which helps per-tensor weight quantization and evens out activation channels.

``ranges="activations"`` chooses ``s`` from the *activation* between the two convs instead:
``s_i = (a_i / max a) ** alpha`` with ``a_i`` the channel's calibrated range, the rule
:mod:`.hs_cle` uses through HardSwish. With per-channel weight scales the weight-range rule buys
little (each channel already has its own scale), while the activation between the convs is
quantized *per tensor*: in PP-OCRv3 det's first blocks (8-channel ReLU pairs at 1/2 resolution)
the cumulative SNR against float drops from 27 to 13 dB through one such pair. A depthwise
consumer absorbs any ``s`` exactly in its per-channel weight scales (``alpha_depthwise = 1``); a
dense consumer's input columns get scaled, which its per-output-channel weight scales see, so its
exponent trades activation against weight error (``alpha_dense``). No node is added, so unlike
HS-CLE it costs nothing at run time.

HardSwish is not positive-homogeneous (``HS(x / s) != HS(x) / s``), and neither is Clip(0, 6): pairs
joined by them are left alone here (:mod:`.hs_cle` handles HardSwish with one extra gate node).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ocrquant.errors import OcrQuantError
from ocrquant.quantization.algorithms.base import Algorithm, AlgorithmContext, register_algorithm
from ocrquant.quantization.algorithms.hs_cle import channel_min_max, equalising_scales
from ocrquant.quantization.graph import consumers, get_attr, initializers

HOMOGENEOUS = ("Relu",)


class _Float64Weights:
    """Initializers edited in float64 (scales compose over several pairs without float32 drift),
    written back once."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.inits = initializers(model)
        self.arrays: dict[str, np.ndarray] = {}

    def get(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            self.arrays[name] = numpy_helper.to_array(self.inits[name]).astype(np.float64)
        return self.arrays[name]

    def migrate(self, conv1: onnx.NodeProto, conv2: onnx.NodeProto, s: np.ndarray, depthwise: bool) -> None:
        """Divide conv1's output channel ``c`` (filter and bias) by ``s_c``, multiply conv2's input
        channel ``c`` by it: the float function is unchanged."""
        self.get(conv1.input[1])[:] /= s.reshape(-1, 1, 1, 1)
        if len(conv1.input) > 2 and conv1.input[2] in self.inits:
            self.get(conv1.input[2])[:] /= s
        self.get(conv2.input[1])[:] *= s.reshape((-1, 1, 1, 1) if depthwise else (1, -1, 1, 1))

    def write_back(self) -> None:
        for name, arr in self.arrays.items():
            self.inits[name].CopyFrom(numpy_helper.from_array(arr.astype(np.float32), name))


@register_algorithm("cle", stage="float")
class CrossLayerEqualization(Algorithm):
    def __init__(
        self,
        iterations: int = 4,
        eps: float = 1e-8,
        ranges: str = "weights",
        alpha_dense: float = 0.5,
        alpha_depthwise: float = 1.0,
        min_ratio: float = 1e-3,
        max_batches: int = 32,
    ) -> None:
        if ranges not in ("weights", "activations"):
            raise OcrQuantError(f"cle: ranges must be 'weights' or 'activations', got {ranges!r}")
        self.iterations = iterations
        self.eps = eps
        self.ranges = ranges
        self.alpha_dense = alpha_dense
        self.alpha_depthwise = alpha_depthwise
        self.min_ratio = min_ratio
        self.max_batches = max_batches

    def find_pairs(self, ctx: AlgorithmContext) -> list[tuple[Any, Any]]:
        model = ctx.model
        cons = consumers(model)
        inits = initializers(model)
        outputs = {o.name for o in model.graph.output}
        pairs = []
        for conv1 in model.graph.node:
            if conv1.op_type != "Conv" or len(conv1.input) < 2 or conv1.input[1] not in inits:
                continue
            tensor = conv1.output[0]
            nxt = cons.get(tensor, [])
            if len(nxt) == 1 and nxt[0].op_type in HOMOGENEOUS and tensor not in outputs:
                tensor = nxt[0].output[0]
                nxt = cons.get(tensor, [])
            if len(nxt) != 1 or nxt[0].op_type != "Conv" or tensor in outputs:
                continue
            conv2 = nxt[0]
            if conv2.input[0] != tensor or conv2.input[1] not in inits:
                continue
            c_out = inits[conv1.input[1]].dims[0]
            group2 = get_attr(conv2, "group", 1)
            w2 = inits[conv2.input[1]].dims
            depthwise = group2 == c_out and w2[0] == c_out and w2[1] == 1
            if group2 == 1 or depthwise:
                pairs.append((conv1, conv2))
        return pairs

    def apply(self, ctx: AlgorithmContext) -> dict[str, Any]:
        pairs = self.find_pairs(ctx)
        if self.ranges == "activations":
            return self._apply_activation_ranges(ctx, pairs)
        weights = _Float64Weights(ctx.model)
        get = weights.get
        for _ in range(self.iterations):
            for conv1, conv2 in pairs:
                w1, w2 = get(conv1.input[1]), get(conv2.input[1])
                depthwise = get_attr(conv2, "group", 1) > 1
                r1 = np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)
                r2 = (
                    np.abs(w2).reshape(w2.shape[0], -1).max(axis=1)
                    if depthwise
                    else np.abs(w2).max(axis=(0, 2, 3))
                )
                s = np.where((r1 > self.eps) & (r2 > self.eps), np.sqrt(r1 / np.maximum(r2, self.eps)), 1.0)
                weights.migrate(conv1, conv2, s, depthwise)
        weights.write_back()
        return {"pairs": len(pairs), "layers": sorted({n.name for p in pairs for n in p})}

    def activation_scales(self, lo: np.ndarray, hi: np.ndarray, depthwise: bool) -> np.ndarray:
        """Per-channel ``s`` from the activation's channel ranges (0 included, as the grid includes it)."""

        alpha = self.alpha_depthwise if depthwise else self.alpha_dense
        return equalising_scales(np.maximum(hi, 0.0) - np.minimum(lo, 0.0), alpha, self.min_ratio)

    def _apply_activation_ranges(self, ctx: AlgorithmContext, pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
        """One pass: each pair's scale comes from its own activation in the unchanged model. Exact
        rescaling leaves every other pair's activation as it was, so the statistics stay valid."""

        if not pairs:
            return {"pairs": 0, "ranges": self.ranges}
        mins, maxs = channel_min_max(
            ctx.model, [c2.input[0] for _, c2 in pairs], ctx.batches, self.max_batches, ctx.progress
        )
        weights = _Float64Weights(ctx.model)
        spread = []
        for conv1, conv2 in pairs:
            depthwise = get_attr(conv2, "group", 1) > 1
            s = self.activation_scales(mins[conv2.input[0]], maxs[conv2.input[0]], depthwise)
            weights.migrate(conv1, conv2, s, depthwise)
            spread.append(float(s.min()))
        weights.write_back()
        return {
            "pairs": len(pairs),
            "ranges": self.ranges,
            "depthwise_consumers": sum(get_attr(c2, "group", 1) > 1 for _, c2 in pairs),
            "min_scale": min(spread),
            "layers": sorted({n.name for p in pairs for n in p}),
        }


@register_algorithm("act_cle", stage="float")
class ActivationCLE(CrossLayerEqualization):
    """CLE with scales from the calibrated activation ranges (``cle`` with ``ranges="activations"``)."""

    def __init__(self, ranges: str = "activations", **options: Any) -> None:
        super().__init__(ranges=ranges, **options)
