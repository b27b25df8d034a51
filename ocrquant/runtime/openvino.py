"""OpenVINO CPU backend: runs the same ONNX (float or QDQ INT8) model with OpenVINO's INT8 kernels.

Install with ``pip install ocrquant[openvino]`` (pinned: openvino==2026.4.1, the version tested).

Why it is built this way:

* **Static shape per input size.** OpenVINO 2026.4 was seen to crash on a det model with dynamic
  input shapes (the zoo's PP-OCRv3 det happens to compile dynamically, but not every model does),
  and static shapes let it pick better kernels anyway. The runner reshapes the model to the exact
  shape of each call's input and caches one compiled model (and infer request) per shape, so the
  few sizes a task uses (det 544x960, rec 48x320 batch 1/8, ...) compile once each.
* **Then one dynamic model.** A pipeline's rec batches are padded to their widest crop, so their
  widths rarely repeat, and each static compile costs one to two seconds: past ``max_cached_shapes``
  distinct shapes, new shapes run on one model compiled with the file's own dynamic dimensions (if it
  compiles; otherwise static as before). The few shapes a task repeats stay static, because there a
  static model runs faster: PP-OCRv6 small INT8 on 2 cores (AMD EPYC Zen 4), static vs dynamic, det
  1x3x736x1312 83 vs 105 ms, cls 6x3x48x192 3.4 vs 4.5 ms, rec 6x3x48x320 37.6 vs 40.5 ms, a first call
  on a new static shape (its compile) 1.5-1.6 s (``python benchmarks/openvino_shapes.py``).
* **Explicit settings.** ``INFERENCE_NUM_THREADS`` from ``RuntimeOptions.threads``, performance hint
  LATENCY, one stream, no CPU pinning (as onnxruntime), and ``INFERENCE_PRECISION_HINT=f32``: on
  AMX CPUs OpenVINO would otherwise run float models in bf16, a different model from onnxruntime's.
* **QDQ compatibility rewrite.** Constant Q/DQ pairs behind a shape-dependent Reshape (PP-OCRv3
  rec's LayerNorm gamma) make OpenVINO's ``MultiplyPartialTransformation`` throw; the runner folds them
  into their fake-quantized constants (:func:`ocrquant.onnx_qdq.fold_constant_qdq`, exact) when the
  pattern is present. ocrquant's own ``ort-cpu`` models are written without it.
"""

from __future__ import annotations

import io
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ocrquant.errors import OcrQuantError
from ocrquant.onnx_qdq import fold_constant_qdq
from ocrquant.runtime.base import Runner, RuntimeOptions, register_backend

try:
    import openvino as ov
except ImportError:  # the extra is optional; the runner says how to get it
    ov = None

log = logging.getLogger("ocrquant")


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
        self.rewritten = len(fold_constant_qdq(proto))
        if self.rewritten:
            log.info(
                "openvino: folded %d constant Q/DQ pairs of %s (see ocrquant.onnx_qdq)",
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
        self._dynamic: Any = None  # the dynamic-shape request once needed; False: it did not compile

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
        if self.options.profile:
            cfg["PERF_COUNT"] = True  # per-layer times and the kernel each layer ran (profiling_info)
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
        if len(self._cache) >= self.max_cached_shapes and self._dynamic is not False:
            if self._dynamic is None:
                try:
                    model = self.core.read_model(io.BytesIO(self._bytes))
                    self._dynamic = self.core.compile_model(model, "CPU", self.config).create_infer_request()
                    self.compile_count += 1
                except RuntimeError:
                    log.info("openvino: %s does not compile with dynamic shapes; static per shape", self.path)
                    self._dynamic = False
            if self._dynamic is not False:
                return self._dynamic
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
        self._last = request
        return [request.get_output_tensor(i).data.copy() for i in range(len(self._outputs))]

    def profiling_info(self) -> list[Any]:
        """OpenVINO's per-layer record of the last call (``RuntimeOptions(profile=True)``): each item has
        ``node_name``, ``node_type``, ``exec_type`` (the kernel, e.g. ``jit_avx512_amx_I8``, which names
        the precision it ran in), ``real_time`` and ``status``."""
        if not self.options.profile:
            raise OcrQuantError("profiling_info needs RuntimeOptions(profile=True)", self.path)
        last = getattr(self, "_last", None)
        return list(last.profiling_info) if last is not None else []
