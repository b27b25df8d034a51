"""Paddle Inference CPU backend: runs the original ``.pdmodel``/``.pdiparams`` a zoo entry ships.

Why a backend for the source framework: the ONNX conversion (and then INT8) is only trustworthy
when its metric matches the model it came from, run by the framework it came from.

``paddle`` is imported when a runner is created, not when this module is, so registering the
backend costs nothing on installs without ``ocrquant[paddle]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from ocrquant.errors import OcrQuantError
from ocrquant.frontends.paddle import paddle_model_files, paddle_predictor, run_predictor
from ocrquant.runtime.base import Runner, RuntimeOptions, register_backend


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
        self.predictor = paddle_predictor(program, params, options.threads, options.optimization)
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
        return run_predictor(self.predictor, feeds)
