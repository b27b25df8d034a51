"""onnxruntime CPU backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from ocrquant.errors import OcrQuantError
from ocrquant.runtime.base import Runner, RuntimeOptions, register_backend

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(options: RuntimeOptions) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if options.threads:
        so.intra_op_num_threads = options.threads
        so.inter_op_num_threads = 1
    spin = "1" if options.spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    so.graph_optimization_level = _OPT_LEVELS[options.optimization]
    if options.profile:
        so.enable_profiling = True
        so.profile_file_prefix = options.profile_prefix
    return so


@register_backend("onnxruntime")
class OrtRunner(Runner):
    def __init__(self, model: Path, options: RuntimeOptions) -> None:
        if not model.is_file():
            raise OcrQuantError("model file not found", model)
        self.path = model
        try:
            self.session = ort.InferenceSession(
                str(model), sess_options=session_options(options), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises several exception types for a bad model
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OcrQuantError(f"onnxruntime cannot load the model: {first[:300]}", model) from None
        self._inputs = [i.name for i in self.session.get_inputs()]
        self._outputs = [o.name for o in self.session.get_outputs()]

    @property
    def input_names(self) -> list[str]:
        return self._inputs

    @property
    def output_names(self) -> list[str]:
        return self._outputs

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return self.session.run(None, feeds)
        except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidArgument,
                ort.capi.onnxruntime_pybind11_state.RuntimeException) as exc:  # fmt: skip
            # almost always an input the model cannot take (a fixed --input-shape, another channel count)
            shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items())
            first = " ".join(str(exc).split())[:240]
            raise OcrQuantError(f"onnxruntime cannot run the model on {shapes}: {first}", self.path) from None

    def input_shapes(self) -> list[list[int | str | None]] | None:
        return [list(i.shape) for i in self.session.get_inputs()]

    def output_shapes(self) -> list[list[int | str | None]] | None:
        return [list(o.shape) for o in self.session.get_outputs()]

    def end_profiling(self) -> str | None:
        return self.session.end_profiling()
