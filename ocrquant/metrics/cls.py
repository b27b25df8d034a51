"""Text-direction classification metric (PaddleOCR ``ClsMetric``: predicted class == true class).

Per-class accuracy is reported besides the overall figure because a cls set is usually built from
a rec set by rotating some crops: the classes can be unbalanced, and a quantized model that starts
calling everything "0" would keep a high overall accuracy while its class-180 accuracy collapses.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ocrquant.metrics.base import AccuracyStats, Metric


class ClsMetric(AccuracyStats, Metric):
    """Accumulates accuracy overall and per true class (keys ``acc_class_<k>`` / ``count_class_<k>``)."""

    primary = "acc"

    def __init__(self) -> None:
        self.count = 0
        self.correct = 0
        self.class_count: Counter[int] = Counter()
        self.class_correct: Counter[int] = Counter()

    def target_from_prediction(self, prediction: dict[str, Any]) -> int:
        return int(prediction["index"])

    def update(self, prediction: dict[str, Any], target: int) -> dict[str, Any]:
        """Score one crop: ``prediction["index"]`` against the true class index ``target``."""
        truth = int(target)
        correct = int(prediction["index"]) == truth
        self.count += 1
        self.correct += int(correct)
        self.class_count[truth] += 1
        self.class_correct[truth] += int(correct)
        return {"correct": correct, "target": truth}

    def result(self) -> dict[str, float]:
        """Overall accuracy (0 for an empty set) plus accuracy and count of every class seen as a target."""
        out: dict[str, float] = {
            "acc": self.correct / self.count if self.count else 0.0,
            "count": self.count,
        }
        for k in sorted(self.class_count):
            out[f"acc_class_{k}"] = self.class_correct[k] / self.class_count[k]
            out[f"count_class_{k}"] = self.class_count[k]
        return out
