"""TensorRT backend: builds an engine from the (QDQ INT8 or float) ONNX model on a CUDA GPU.

Install with ``pip install ocrquant[tensorrt]`` (pinned: tensorrt==10.13.3.9, cuda-python==12.9.0).

Why it is built this way:

* **GPU check first, before anything that could block.** Without a CUDA driver and device the
  backend fails at once with one line ("tensorrt backend needs a CUDA GPU; none found"), which the
  CLI turns into exit code 2; it never imports tensorrt or waits on a driver that is not there. The
  check calls ``cuInit``/``cuDeviceGetCount`` from ``libcuda`` through ctypes (milliseconds).
* **Explicit quantization.** A QDQ model carries its own scales, so the engine is built from the
  Q/DQ nodes (no TensorRT calibrator): INT8 (and FP16 for the layers that stay float, if asked)
  builder flags, the ONNX parser, one optimization profile fixed to the call's input shape.
* **One engine per input shape**, like the OpenVINO runner: a fixed-shape engine is the fastest
  TensorRT can build, and an OCR task uses a handful of shapes.

This path is written against the TensorRT 10 Python API; the machine it was written on has no GPU,
so only the no-GPU path is tested here.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ocrquant.errors import OcrQuantError
from ocrquant.runtime.base import Runner, RuntimeOptions, register_backend

log = logging.getLogger("ocrquant")

NO_GPU = "tensorrt backend needs a CUDA GPU; none found"
NEEDS_EXTRA = "the tensorrt backend needs tensorrt and cuda-python: pip install 'ocrquant[tensorrt]'"


def cuda_device_count() -> int:
    """CUDA devices visible through the driver API; 0 when there is no driver or no device."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return 0
    try:
        if lib.cuInit(0) != 0:
            return 0
        count = ctypes.c_int(0)
        if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return int(count.value)
    except AttributeError:
        return 0


def has_qdq(path: Path) -> bool:
    model = onnx.load(str(path), load_external_data=False)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


@dataclass
class _Engine:
    engine: Any
    context: Any
    buffers: dict[str, tuple[int, np.ndarray]]  # tensor name -> (device pointer, host array)


def _check(result: Any) -> Any:
    """cuda-python returns (err, value...) tuples; raise on a CUDA error."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise OcrQuantError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


@register_backend("tensorrt")
class TensorRtRunner(Runner):
    """TensorRT engine per input shape, built from the ONNX model (explicit Q/DQ quantization)."""

    fp16: bool = False  # let the layers that stay float use FP16 as well

    def __init__(self, model: Path, options: RuntimeOptions) -> None:
        if cuda_device_count() == 0:
            raise OcrQuantError(NO_GPU)
        try:
            import tensorrt as trt

            try:
                from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
            except ImportError:
                from cuda import cudart  # older cuda-python
        except ImportError:
            raise OcrQuantError(NEEDS_EXTRA) from None
        if not model.is_file():
            raise OcrQuantError("model file not found", model)
        self.trt, self.cudart = trt, cudart
        self.path = model
        self.options = options
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.trt_runtime = trt.Runtime(self.logger)
        self.int8 = has_qdq(model)
        proto = onnx.load(str(model), load_external_data=False)
        inits = {i.name for i in proto.graph.initializer}
        self._inputs = [i.name for i in proto.graph.input if i.name not in inits]
        self._outputs = [o.name for o in proto.graph.output]
        self.stream = _check(cudart.cudaStreamCreate())
        self._cache: dict[tuple[tuple[int, ...], ...], _Engine] = {}

    @property
    def input_names(self) -> list[str]:
        return self._inputs

    @property
    def output_names(self) -> list[str]:
        return self._outputs

    def build_engine(self, key: tuple[tuple[int, ...], ...]) -> bytes:
        """Serialized engine for one set of input shapes."""
        trt = self.trt
        builder = trt.Builder(self.logger)
        network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(self.path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise OcrQuantError(f"TensorRT cannot parse the model: {errors[:300]}", self.path)
        config = builder.create_builder_config()
        if self.int8:
            config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: scales come from the Q/DQ nodes
        if self.fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        for name, shape in zip(self._inputs, key, strict=True):
            profile.set_shape(name, shape, shape, shape)
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise OcrQuantError(f"TensorRT could not build an engine for input shape {list(key)}", self.path)
        return bytes(serialized)

    def _engine(self, key: tuple[tuple[int, ...], ...]) -> _Engine:
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        trt, cudart = self.trt, self.cudart
        engine = self.trt_runtime.deserialize_cuda_engine(self.build_engine(key))
        context = engine.create_execution_context()
        for name, shape in zip(self._inputs, key, strict=True):
            context.set_input_shape(name, shape)
        buffers: dict[str, tuple[int, np.ndarray]] = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = tuple(context.get_tensor_shape(name))
            host = np.empty(shape, dtype=trt.nptype(engine.get_tensor_dtype(name)))
            ptr = _check(cudart.cudaMalloc(max(host.nbytes, 1)))
            context.set_tensor_address(name, int(ptr))
            buffers[name] = (int(ptr), host)
        cached = _Engine(engine, context, buffers)
        self._cache[key] = cached
        return cached

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        cudart = self.cudart
        arrays = [np.ascontiguousarray(feeds[n], dtype=np.float32) for n in self._inputs]
        eng = self._engine(tuple(tuple(int(d) for d in a.shape) for a in arrays))
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, arr in zip(self._inputs, arrays, strict=True):
            ptr, _ = eng.buffers[name]
            _check(cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, self.stream))
        if not eng.context.execute_async_v3(int(self.stream)):
            raise OcrQuantError("TensorRT execution failed", self.path)
        outs = []
        for name in self._outputs:
            ptr, host = eng.buffers[name]
            _check(cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, d2h, self.stream))
            outs.append(host)
        _check(cudart.cudaStreamSynchronize(self.stream))
        return [o.copy() for o in outs]

    def __del__(self) -> None:
        cudart = getattr(self, "cudart", None)
        if cudart is None:
            return
        for eng in getattr(self, "_cache", {}).values():
            for ptr, _ in eng.buffers.values():
                cudart.cudaFree(ptr)
