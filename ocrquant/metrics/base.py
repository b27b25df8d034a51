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
