"""Searches over variants of a quantized model and where their trials run.

``quantize`` is the library's quantize entry point: one recipe, or ``auto``'s range and algorithm
search (:mod:`ocrquant.tuning.method_search`); the budget search (:mod:`ocrquant.tuning.budget`) and
the sensitivity job (:mod:`ocrquant.tuning.sensitivity`) build on it; trials run on an executor
(:mod:`ocrquant.tuning.executor`: in-process, local workers, Ray). Sits above quantization,
evaluation and analysis; nothing below imports it.
"""

from ocrquant.tuning.method_search import quantize

__all__ = ["quantize"]
