"""Cross-layer equalisation (Nagel et al., 2019, "Data-Free Quantization").

For ``Conv1 -> f -> Conv2`` with ``f`` positive-homogeneous (``f(x / s) = f(x) / s`` for ``s > 0``:
ReLU, or no op at all), dividing Conv1's output channel ``i`` (weights and bias) by ``s_i`` and
multiplying Conv2's input channel ``i`` by ``s_i`` leaves the float function unchanged. Choosing
``s_i = sqrt(r1_i / r2_i)`` (``r`` = max |w| of the channel in each layer) gives both layers the same
per-channel range, which helps per-tensor weight quantization and evens out activation channels.

HardSwish is not positive-homogeneous (``HS(x / s) != HS(x) / s``), and neither is Clip(0, 6): pairs
joined by them are left alone. (An exact variant for HardSwish needs a per-channel scaled activation,
``s * y * clip(y + 3/s, ...)``-style, which is a different graph; see docs/quantization-findings.md.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import numpy_helper

from ocrquant.quantization.algorithms.base import Algorithm, AlgorithmContext, register_algorithm
from ocrquant.quantization.graph import consumers, get_attr, initializers

HOMOGENEOUS = ("Relu",)


@register_algorithm("cle", stage="float")
class CrossLayerEqualization(Algorithm):
    def __init__(self, iterations: int = 4, eps: float = 1e-8) -> None:
        self.iterations = iterations
        self.eps = eps

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
        inits = initializers(ctx.model)
        pairs = self.find_pairs(ctx)
        arrays = {}

        def get(name: str) -> np.ndarray:
            if name not in arrays:
                arrays[name] = numpy_helper.to_array(inits[name]).astype(np.float64)
            return arrays[name]

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
                w1 /= s.reshape(-1, 1, 1, 1)
                if len(conv1.input) > 2 and conv1.input[2] in inits:
                    get(conv1.input[2])[:] /= s
                if depthwise:
                    w2 *= s.reshape(-1, 1, 1, 1)
                else:
                    w2 *= s.reshape(1, -1, 1, 1)
        for name, arr in arrays.items():
            inits[name].CopyFrom(numpy_helper.from_array(arr.astype(np.float32), name))
        return {"pairs": len(pairs), "layers": sorted({n.name for p in pairs for n in p})}
