"""OpenVINO CPU backend: runs the same ONNX (float or QDQ INT8) model with OpenVINO's INT8 kernels.

Install with ``pip install ocrquant[openvino]`` (pinned: openvino==2026.4.1, the version tested).

Why it is built this way:

* **Static shape per input size.** OpenVINO 2026.4 was seen to crash on a det model with dynamic
  input shapes (the zoo's PP-OCRv3 det happens to compile dynamically, but not every model does),
  and static shapes let it pick better kernels anyway. The runner reshapes the model to the exact
  shape of each call's input and caches one compiled model (and infer request) per shape, so the
  few sizes a task uses (det 544x960, rec 48x320 batch 1/8, ...) compile once each.
* **Explicit settings.** ``INFERENCE_NUM_THREADS`` from ``RuntimeOptions.threads``, performance hint
  LATENCY, one stream, no CPU pinning (as onnxruntime), and ``INFERENCE_PRECISION_HINT=f32``: on
  AMX CPUs OpenVINO would otherwise run float models in bf16, a different model from onnxruntime's.
* **QDQ compatibility rewrite.** onnxruntime's ``quantize_static`` puts a QuantizeLinear ->
  DequantizeLinear pair on *constants that reach an op through a shape-dependent Reshape* (PP-OCRv3
  rec: LayerNorm gamma, ``Reshape(layer_norm.w, Slice(Shape(x)))`` -> Q -> DQ -> Mul). OpenVINO
  constant-folds the Reshape and its low-precision pass ``MultiplyPartialTransformation`` then throws
  ("index '0' out of range") on a Multiply whose two inputs are both dequantized. The rewrite
  replaces such a pair by the fake-quantized float constant ``(clip(rint(w/s)+zp)-zp)*s``, which is
  the exact value onnxruntime computes, so the model's arithmetic is unchanged; activation Q/DQ
  pairs (the INT8 part) are left alone. It is applied only when the pattern is present.
"""

from __future__ import annotations

import io
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ocrquant.errors import OcrQuantError
from ocrquant.runtime.base import Runner, RuntimeOptions, register_backend

try:
    import openvino as ov
except ImportError:  # the extra is optional; the runner says how to get it
    ov = None

log = logging.getLogger("ocrquant")

# ops that only move data: a per-tensor fake-quantization commutes with them
_MOVE_OPS = {"Reshape", "Unsqueeze", "Squeeze", "Transpose", "Flatten", "Identity", "Expand"}
_QRANGE = {
    onnx.TensorProto.INT8: (-128, 127),
    onnx.TensorProto.UINT8: (0, 255),
    onnx.TensorProto.INT16: (-32768, 32767),
    onnx.TensorProto.UINT16: (0, 65535),
}


def fold_constant_qdq(model: onnx.ModelProto) -> int:
    """Replace Q->DQ pairs on constant-derived tensors by fake-quantized float constants, in place.

    Returns how many pairs were folded. Only per-tensor pairs on a chain of data-movement ops over one
    initializer are folded (where the result provably equals what onnxruntime computes).
    """
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in g.output}
    removed: set[int] = set()
    folded = 0
    for q in list(g.node):
        if q.op_type != "QuantizeLinear" or len(q.input) < 2:
            continue
        scale = inits.get(q.input[1])
        zp = inits.get(q.input[2]) if len(q.input) > 2 else None
        if scale is None or (len(q.input) > 2 and zp is None) or int(np.prod(scale.dims)) != 1:
            continue
        # walk up through data-movement ops, each feeding only this chain, to an initializer
        chain: list[onnx.NodeProto] = []
        t = q.input[0]
        while t not in inits:
            node = producer.get(t)
            if node is None or node.op_type not in _MOVE_OPS or len(consumers.get(t, [])) != 1:
                break
            chain.append(node)
            t = node.input[0]
        if t not in inits:
            continue
        dqs = consumers.get(q.output[0], [])
        if not dqs or any(d.op_type != "DequantizeLinear" for d in dqs) or q.output[0] in graph_outputs:
            continue
        if any(d.input[1:] != q.input[1:] for d in dqs):
            continue
        s = float(numpy_helper.to_array(scale).reshape(()))
        z = int(numpy_helper.to_array(zp).reshape(())) if zp is not None else 0
        qtype = zp.data_type if zp is not None else onnx.TensorProto.UINT8
        lo, hi = _QRANGE.get(qtype, (None, None))
        if lo is None:
            continue
        w = numpy_helper.to_array(inits[t]).astype(np.float32)
        fq = ((np.clip(np.rint(w / s) + z, lo, hi) - z) * s).astype(np.float32)
        new_name = f"{t}__ov_fakequant{folded}"
        g.initializer.append(numpy_helper.from_array(fq, new_name))
        bottom = chain[-1] if chain else None
        if bottom is not None:
            bottom.input[0] = new_name
            src = q.input[0]  # the chain's output now carries fake-quantized values
        else:
            src = new_name
        for d in dqs:
            for c in consumers.get(d.output[0], []):
                for k, name in enumerate(c.input):
                    if name == d.output[0]:
                        c.input[k] = src
            if d.output[0] in graph_outputs:
                raise OcrQuantError("cannot rewrite a model whose output is a constant DequantizeLinear")
            removed.add(id(d))
        removed.add(id(q))
        folded += 1
    if removed:
        keep = [n for n in g.node if id(n) not in removed]
        del g.node[:]
        g.node.extend(keep)
    return folded


def cpu_has_vnni() -> bool | None:
    """Whether the CPU has an INT8 dot-product instruction (VNNI/AMX); None where it cannot be told."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags))


def _has_qdq(proto: onnx.ModelProto) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node)


def _require_openvino() -> Any:
    if ov is None:
        raise OcrQuantError(
            "the openvino backend needs the openvino package: pip install 'ocrquant[openvino]' "
            "(openvino==2026.4.1)"
        )
    return ov


@register_backend("openvino")
class OpenVinoRunner(Runner):
    """OpenVINO CPU runner with one compiled model per input shape (least recently used dropped first)."""

    max_cached_shapes = 16  # det at max side 960 on mixed-size images could otherwise grow without end

    def __init__(self, model: Path, options: RuntimeOptions) -> None:
        ovm = _require_openvino()
        if not model.is_file():
            raise OcrQuantError("model file not found", model)
        self.path = model
        self.options = options
        self.core = ovm.Core()
        try:
            proto = onnx.load(str(model))
        except Exception as exc:  # onnx raises DecodeError and others for a broken file
            raise OcrQuantError(f"not a readable ONNX model: {str(exc).strip()[:200]}", model) from None
        self.rewritten = fold_constant_qdq(proto)
        if self.rewritten:
            log.info(
                "openvino: folded %d constant Q/DQ pairs of %s (see ocrquant.runtime.openvino)",
                self.rewritten,
                model.name,
            )
        if _has_qdq(proto) and cpu_has_vnni() is False:
            # measured on an AVX2-only CPU: the first det convolutions differ from onnxruntime by 7.5%
            # with 8-bit weights and match exactly once weights are 7-bit (vpmaddubsw saturates)
            log.warning(
                "openvino: this CPU has no VNNI/AMX; OpenVINO's INT8 convolutions can saturate with 8-bit "
                "weights, so outputs may differ from onnxruntime's (quantize weights to 7 bits for it)"
            )
        self._bytes = proto.SerializeToString()
        init_names = {x.name for x in proto.graph.initializer}
        self._inputs = [i.name for i in proto.graph.input if i.name not in init_names]
        self._outputs = [o.name for o in proto.graph.output]
        self._cache: OrderedDict[tuple[tuple[int, ...], ...], Any] = OrderedDict()
        self.compile_count = 0

    @property
    def config(self) -> dict[str, Any]:
        """The compile properties, explicit so every measurement states them."""
        cfg: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            "INFERENCE_PRECISION_HINT": "f32",
            # pinned threads cannot move off a core another process is using; on a shared CPU that
            # costs more than pinning saves, and onnxruntime (the comparison) does not pin either
            "ENABLE_CPU_PINNING": False,
        }
        if self.options.threads:
            cfg["INFERENCE_NUM_THREADS"] = self.options.threads
        return cfg

    @property
    def input_names(self) -> list[str]:
        return self._inputs

    @property
    def output_names(self) -> list[str]:
        return self._outputs

    @property
    def cached_shapes(self) -> list[tuple[tuple[int, ...], ...]]:
        return list(self._cache)

    def _request(self, key: tuple[tuple[int, ...], ...]) -> Any:
        request = self._cache.get(key)
        if request is not None:
            self._cache.move_to_end(key)
            return request
        try:
            model = self.core.read_model(io.BytesIO(self._bytes))
            shapes = {n: ov.PartialShape(list(shape)) for n, shape in zip(self._inputs, key, strict=True)}
            model.reshape(shapes)
            compiled = self.core.compile_model(model, "CPU", self.config)
        except RuntimeError as exc:
            lines = [ln for ln in str(exc).splitlines() if ln.strip()]
            raise OcrQuantError(
                f"openvino cannot compile the model for input shape {[list(s) for s in key]}: "
                f"{(lines[-1] if lines else type(exc).__name__)[:300]}",
                self.path,
            ) from None
        self.compile_count += 1
        request = compiled.create_infer_request()
        self._cache[key] = request
        if len(self._cache) > self.max_cached_shapes:
            self._cache.popitem(last=False)
        return request

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        missing = [n for n in self._inputs if n not in feeds]
        if missing:
            raise OcrQuantError(f"missing model input(s): {', '.join(missing)}", self.path)
        arrays = [np.ascontiguousarray(feeds[n]) for n in self._inputs]
        request = self._request(tuple(tuple(int(d) for d in a.shape) for a in arrays))
        request.infer(dict(enumerate(arrays)))
        return [request.get_output_tensor(i).data.copy() for i in range(len(self._outputs))]
