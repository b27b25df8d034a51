"""Calibration subsets: a reproducible random pick from a dataset.

Post-training quantization only needs a few hundred representative inputs; picking them at random (not
the first N, which in ICDAR are often from the same scenes) and from a seed keeps two runs comparable.
"""

from __future__ import annotations

import logging
import random

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
