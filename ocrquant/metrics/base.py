"""The metric contract: accumulate (prediction, target) pairs, report totals over the set."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np


class Metric(ABC):
    """Accumulates (prediction, target) pairs; ``result`` gives totals over the whole set."""

    @abstractmethod
    def update(self, prediction: dict[str, Any], target: Any) -> dict[str, Any]:
        """Add one sample; return its own figures (stored in per-sample results)."""

    @abstractmethod
    def result(self) -> dict[str, float]:
        """Figures over everything added so far."""

    #: name of the headline figure in ``result()`` (what quantization must keep)
    primary: ClassVar[str] = ""

    #: how ``--method auto`` ranks quantized variants on held-out data: "fidelity" (this metric with
    #: the float model's predictions as targets) or "metric" (against the labels). See
    #: ``ocrquant.evaluation.fidelity`` for why fidelity is the default.
    selection: ClassVar[str] = "fidelity"

    #: ``--method auto`` ranks its range candidates and judges its accuracy algorithms by the mean
    #: held-out output loss (the quantized model's output fitted to the float model's, every value
    #: counted) instead of ``selection``'s figure: for a task whose held-out set holds too few
    #: decisions for either figure to tell candidates apart. ``selection`` still ranks the budget search.
    rank_by_output_loss: ClassVar[bool] = False

    def target_from_prediction(self, prediction: dict[str, Any]) -> Any:
        """A target that ``prediction`` matches perfectly: scoring one model against another model's
        predictions (fidelity to the float model) needs no labels and none of their noise."""
        raise NotImplementedError(f"{type(self).__name__} cannot use predictions as targets")

    #: names of the per-sample counts ``sample_stats`` returns (empty: no resampling, no CI)
    stat_names: ClassVar[tuple[str, ...]] = ()

    @staticmethod
    def sample_stats(figures: dict[str, Any]) -> list[float]:
        """One sample's contribution to the set-level figure, as counts that add up over samples.

        Why: the primary figure of a resampled set is then a function of summed rows, so a bootstrap
        over thousands of resamples is one matrix product, not thousands of metric passes.
        """
        raise NotImplementedError

    @staticmethod
    def primary_from_stats(totals: np.ndarray) -> np.ndarray:
        """The primary figure from summed ``sample_stats`` (last axis: ``stat_names``), vectorised."""
        raise NotImplementedError


class AccuracyStats:
    """``sample_stats`` for metrics whose primary figure is the share of samples marked ``correct``."""

    stat_names: ClassVar[tuple[str, ...]] = ("correct", "count")

    @staticmethod
    def sample_stats(figures: dict[str, Any]) -> list[float]:
        return [float(bool(figures["correct"])), 1.0]

    @staticmethod
    def primary_from_stats(totals: np.ndarray) -> np.ndarray:
        count = totals[..., 1]
        return np.divide(totals[..., 0], count, out=np.zeros_like(count, dtype=float), where=count > 0)
