"""Runtimes behind one Runner interface."""

from ocrquant.runtime import ort as _ort  # noqa: F401  (registers "onnxruntime")
from ocrquant.runtime.base import BACKENDS, Runner, RuntimeOptions, create_runner

__all__ = ["BACKENDS", "Runner", "RuntimeOptions", "create_runner"]
