"""Paddle Inference CPU backend: runs the original ``.pdmodel``/``.pdiparams`` a zoo entry ships.

Why a backend for the source framework: the ONNX conversion (and then INT8) is only trustworthy
when its metric matches the model it came from, run by the framework it came from.

``paddle`` is imported when a runner is created, not when this module is, so registering the
backend costs nothing on installs without ``ocrquant[paddle]``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ocrquant.errors import OcrQuantError
from ocrquant.runtime.base import Runner, RuntimeOptions, register_backend

# Paddle 2.6's CPU IR pass ``self_attention_fuse_pass`` dies with SIGILL while loading PP-OCRv4 rec
# on many x86 CPUs (PaddleOCR issue #11597, Paddle issue #64852); the model has no pattern it fuses.
_BROKEN_PASSES = ("self_attention_fuse_pass",)
_ONEDNN_CACHE = 10  # oneDNN primitive cache entries; PaddleOCR's bound for variable input shapes


def paddle_model_files(model: Path) -> tuple[Path, Path]:
    """``(program, params)`` for a ``.pdmodel`` file, or a directory holding exactly one."""
    model = Path(model)
    if model.is_dir():
        found = sorted(model.glob("*.pdmodel"))
        if len(found) != 1:
            what = "no .pdmodel" if not found else f"{len(found)} .pdmodel files"
            raise OcrQuantError(f"expected one Paddle inference model in the directory, found {what}", model)
        model = found[0]
    if model.suffix != ".pdmodel":
        raise OcrQuantError("the paddle backend loads Paddle inference models (.pdmodel + .pdiparams)", model)
    if not model.is_file():
        raise OcrQuantError("model file not found", model)
    params = model.with_suffix(".pdiparams")
    if not params.is_file():
        raise OcrQuantError(f"weights file {params.name} not found beside the model", model)
    return model, params


def paddle_error_line(exc: BaseException) -> str:
    """The one informative line of a Paddle error: its ``...Error: message`` line, which follows the
    Python stack of the model's export (from the exporter's machine) or a C++ traceback."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.strip().startswith("-")]
    named = [ln for ln in lines if re.match(r"^[A-Za-z]+Error: ", ln)]
    return (named[-1:] or lines[-1:] or [type(exc).__name__])[0][:300]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def import_paddle_inference(what: str = "the paddle backend") -> Any:
    """``paddle.inference``, or the one-line missing-extra error saying ``what`` needed it."""
    os.environ.setdefault("GLOG_minloglevel", "2")  # Paddle's C++ INFO/WARNING logging on stderr
    try:
        import paddle.inference as paddle_infer
    except ImportError as exc:
        from ocrquant.frontends import missing_extra

        raise missing_extra("paddle", what, exc) from None
    return paddle_infer


@register_backend("paddle")
class PaddleRunner(Runner):
    """Paddle Inference predictor on CPU.

    ``RuntimeOptions.optimization`` maps to Paddle's knobs: ``disable`` = no IR passes; ``basic`` =
    IR passes; ``extended``/``all`` = IR passes plus oneDNN kernels (Paddle's fast CPU path).
    ``threads=0`` means every core this process may use (Paddle's own default is one).
    """

    model_format: ClassVar[str] = "paddle"  # what ResolvedModel.path_for() hands this backend

    def __init__(self, model: Path, options: RuntimeOptions) -> None:
        program, params = paddle_model_files(model)
        paddle_infer = import_paddle_inference()
        config = paddle_infer.Config(str(program), str(params))
        config.disable_gpu()
        config.disable_glog_info()
        config.set_cpu_math_library_num_threads(options.threads or _cores())
        config.switch_ir_optim(options.optimization != "disable")
        for name in _BROKEN_PASSES:
            config.delete_pass(name)
        if options.optimization in ("extended", "all"):
            config.enable_mkldnn()
            config.set_mkldnn_cache_capacity(_ONEDNN_CACHE)
        config.enable_memory_optim()
        try:
            self.predictor = paddle_infer.create_predictor(config)
        except Exception as exc:  # Paddle raises its own C++-wrapped error types for a bad model
            raise OcrQuantError(f"Paddle cannot load the model: {paddle_error_line(exc)}", program) from None
        self._inputs = list(self.predictor.get_input_names())
        self._outputs = list(self.predictor.get_output_names())

    @property
    def input_names(self) -> list[str]:
        return self._inputs

    @property
    def output_names(self) -> list[str]:
        return self._outputs

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        unknown = set(feeds) - set(self._inputs)
        if unknown:
            raise OcrQuantError(f"unknown input(s) {sorted(unknown)}; the model takes {self._inputs}")
        for name, value in feeds.items():
            handle = self.predictor.get_input_handle(name)
            array = np.ascontiguousarray(value)
            handle.reshape(list(array.shape))
            handle.copy_from_cpu(array)
        try:
            self.predictor.run()
        except Exception as exc:  # e.g. an input shape the model cannot take
            raise OcrQuantError(f"Paddle inference failed: {paddle_error_line(exc)}") from None
        return [self.predictor.get_output_handle(name).copy_to_cpu() for name in self._outputs]
