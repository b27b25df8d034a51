"""Evaluation of a model on a labelled set with the task's metric."""

from ocrquant.evaluation.evaluate import EvalResult, evaluate, fidelity

__all__ = ["EvalResult", "evaluate", "fidelity"]
