"""The calibration/validation split: which calibration-directory images calibrate and which judge.

Validation data is never the test set: by default the validation samples are drawn (seeded) from the
calibration directory's samples that the calibration pick did not use, compared by image file
(``image_id``), so a cls set derived from rec crops never sees one crop in both roles.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

from ocrquant.data.calibration import image_id, sample_calibration
from ocrquant.data.types import Dataset, Sample
from ocrquant.errors import OcrQuantError

log = logging.getLogger("ocrquant")


@dataclass
class CalibrationSplit:
    """The calibration pick and a validation subset that never shares an image with it, drawn once.

    Why one object: the pipeline, ``auto``'s trials, the budget search and the sensitivity probes must
    agree on which images calibrate and which judge. Drawn once at the API/CLI and passed down, the
    split is the same wherever a trial runs (in-process, a local worker or a Ray node), and the sidecar
    records it (:meth:`describe`)."""

    calibration: list[Sample]
    validation: list[Sample]
    source: str  # "calibration-holdout" | "explicit"
    root: str
    seed: int
    val_seed: int

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "root": self.root,
            "calibration_images": len(self.calibration),
            "validation_images": len(self.validation),
            "calibration_seed": self.seed,
            "validation_seed": self.val_seed,
            "note": "validation images are never calibration images and never the test set "
            "(when source is calibration-holdout)",
        }


def split_calibration(
    calib: Dataset,
    calib_size: int,
    seed: int,
    val_size: int,
    *,
    val_data: Dataset | None = None,
    val_seed: int | None = None,
) -> CalibrationSplit:
    """Calibration samples exactly as the pipeline picks them, plus ``val_size`` validation samples.

    Without ``val_data`` the validation samples come from ``calib``'s samples whose image the
    calibration pick did not use. With ``val_data`` they are drawn from it, minus any image that also
    calibrates (dropped with a warning: validating on calibration images flatters the model).
    """
    if val_size <= 0:
        raise OcrQuantError(f"validation size must be positive, got {val_size}", calib.root)
    if not calib.samples:
        raise OcrQuantError(f"calibration set has no {calib.task} samples", calib.root)
    picked = sample_calibration(calib, min(calib_size, len(calib.samples)), seed)
    used = {image_id(s) for s in picked}
    source = "explicit" if val_data is not None else "calibration-holdout"
    pool_set = val_data if val_data is not None else calib
    pool = [s for s in pool_set.samples if image_id(s) not in used]
    if val_data is not None and len(pool) < len(val_data.samples):
        log.warning(
            "validation: dropped %d samples of %s whose image is also a calibration image",
            len(val_data.samples) - len(pool),
            val_data.root,
        )
    if not pool:
        raise OcrQuantError(
            "no samples left for validation: every image is used for calibration "
            "(lower --calib-size or pass --val-data)",
            pool_set.root,
        )
    vseed = seed + 1 if val_seed is None else val_seed
    n = min(val_size, len(pool))
    if n < val_size:
        log.warning("validation: asked for %d samples but only %d are available; using %d", val_size, n, n)
    idx = sorted(random.Random(vseed).sample(range(len(pool)), n))
    return CalibrationSplit(picked, [pool[i] for i in idx], source, str(pool_set.root), seed, vseed)
