"""Calibration subsets: a reproducible random pick from a dataset.

Post-training quantization only needs a few hundred representative inputs; picking them at random (not
the first N, which in ICDAR are often from the same scenes) and from a seed keeps two runs comparable.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from pathlib import Path

from ocrquant.data.types import Dataset, Sample
from ocrquant.errors import OcrQuantError

log = logging.getLogger("ocrquant")


def sample_calibration(dataset: Dataset, n: int, seed: int = 0) -> list[Sample]:
    """``n`` samples drawn without replacement with ``seed``, kept in dataset order.

    Asking for more samples than exist is not fatal (a small calibration set still works), but the
    warning says how many were really used so a report is never silently based on fewer.
    """
    if n <= 0:
        raise OcrQuantError(f"calibration size must be positive, got {n}", dataset.root)
    total = len(dataset.samples)
    if n >= total:
        if n > total:
            log.warning(
                "calibration: asked for %d samples but %s has only %d; using all %d",
                n,
                dataset.root,
                total,
                total,
            )
        return list(dataset.samples)
    picked = sorted(random.Random(seed).sample(range(total), n))
    return [dataset.samples[i] for i in picked]


def image_id(sample: Sample) -> str:
    """The file a sample reads: a cls set holds each crop twice (upright and turned), and a split that
    keeps one turn of a crop out of training must keep the other out too."""
    return str(Path(sample.image_path).resolve())


def extend_calibration(
    dataset: Dataset, picked: list[Sample], n: int, seed: int = 0, holdout: Iterable[str] = ()
) -> list[Sample]:
    """``picked`` followed by up to ``n - len(picked)`` more samples of ``dataset`` (a seeded random
    order): samples not picked whose image is not in ``holdout`` (image ids, see :func:`image_id`).

    Why: an algorithm that learns thousands of parameters (``distill``) needs more inputs than range
    calibration does, while the held-out images that judge it must stay unseen.
    """
    picked_keys, held = {s.key for s in picked}, set(holdout)
    rest = [s for s in dataset.samples if s.key not in picked_keys and image_id(s) not in held]
    random.Random(seed).shuffle(rest)
    return [*picked, *rest[: max(0, n - len(picked))]]
