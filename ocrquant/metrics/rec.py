"""Text-recognition metric with PaddleOCR's ``RecMetric`` semantics (ppocr/metrics/rec_metric.py).

PaddleOCR's default (``ignore_space=True``, ``is_filter=False``) is the headline figure here:

* ``acc``: prediction equals label after removing ASCII spaces (``" "`` only, as ``str.replace(" ", "")``
  does there; tabs and ideographic spaces are kept) from both. Case, punctuation and symbols count.
* ``norm_edit_sim``: 1 - mean over samples of rapidfuzz ``Levenshtein.normalized_distance`` (edit
  distance / length of the longer string; 0 for two empty strings), computed on the same
  space-removed strings as ``acc``, as PaddleOCR does (it reports this under the name
  ``norm_edit_dis``, although it is a similarity).
* ``acc_ci_alnum``: PaddleOCR's ``is_filter`` normalisation applied after space removal: keep only
  ASCII letters and digits, then lowercase (the usual case-insensitive English benchmark protocol).
  A sample whose *label* normalises to the empty string (e.g. a Chinese or all-punctuation label) is
  left out of this figure and counted in ``alnum_skipped``: PaddleOCR would count it correct
  whenever the prediction also has no ASCII letter or digit, which credits an empty or garbage
  output with a hit. The figure is over ``count - alnum_skipped`` samples.

Figures are exact ratios; PaddleOCR divides by ``count + 1e-5``, so its numbers are smaller by a
relative 1e-5/count at most (a perfect run prints 0.99999...). An empty set gives 0 for every figure.
"""

from __future__ import annotations

import string
from typing import Any

from rapidfuzz.distance import Levenshtein

from ocrquant.metrics.base import AccuracyStats, Metric

_ALNUM = frozenset(string.ascii_letters + string.digits)


def remove_spaces(text: str) -> str:
    """PaddleOCR's ``ignore_space``: drop ASCII spaces only."""
    return text.replace(" ", "")


def normalize_alnum(text: str) -> str:
    """PaddleOCR's ``is_filter``: keep ASCII letters and digits, then lowercase. Filtering first (as
    PaddleOCR does) matters for characters such as the Kelvin sign, which only lowercase to ``k``."""
    return "".join(ch for ch in text if ch in _ALNUM).lower()


class RecMetric(AccuracyStats, Metric):
    """Accumulates word accuracy and edit similarity over a recognition set (see the module docstring)."""

    primary = "acc"

    def __init__(self) -> None:
        self.count = 0
        self.correct = 0
        self.edit_distance_sum = 0.0
        self.alnum_count = 0
        self.alnum_correct = 0

    def target_from_prediction(self, prediction: dict[str, Any]) -> str:
        return str(prediction.get("text") or "")

    def update(self, prediction: dict[str, Any], target: str) -> dict[str, Any]:
        """Score one crop: ``prediction["text"]`` against the label string ``target``."""
        pred = remove_spaces(prediction.get("text") or "")
        label = remove_spaces(target or "")
        correct = pred == label
        distance = float(Levenshtein.normalized_distance(pred, label))

        pred_alnum, label_alnum = normalize_alnum(pred), normalize_alnum(label)
        correct_alnum: bool | None = None
        if label_alnum:
            correct_alnum = pred_alnum == label_alnum
            self.alnum_count += 1
            self.alnum_correct += int(correct_alnum)

        self.count += 1
        self.correct += int(correct)
        self.edit_distance_sum += distance
        return {"correct": correct, "correct_ci_alnum": correct_alnum, "norm_edit_sim": 1.0 - distance}

    def result(self) -> dict[str, float]:
        if self.count == 0:
            return {"acc": 0.0, "acc_ci_alnum": 0.0, "norm_edit_sim": 0.0, "count": 0, "alnum_skipped": 0}
        return {
            "acc": self.correct / self.count,
            "acc_ci_alnum": self.alnum_correct / self.alnum_count if self.alnum_count else 0.0,
            "norm_edit_sim": 1.0 - self.edit_distance_sum / self.count,
            "count": self.count,
            "alnum_skipped": self.count - self.alnum_count,
        }
