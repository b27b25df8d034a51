"""Evaluation of a model on a labelled set with the task's metric."""

from ocrquant.evaluation.evaluate import EvalResult, evaluate

__all__ = ["EvalResult", "evaluate"]
