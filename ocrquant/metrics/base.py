"""The metric contract: accumulate (prediction, target) pairs, report totals over the set."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar


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

    def target_from_prediction(self, prediction: dict[str, Any]) -> Any:
        """A target that ``prediction`` matches perfectly: scoring one model against another model's
        predictions (fidelity to the float model) needs no labels and none of their noise."""
        raise NotImplementedError(f"{type(self).__name__} cannot use predictions as targets")
