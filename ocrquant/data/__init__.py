"""Datasets: readers for the on-disk formats, the embedded sample and calibration subsets."""

from __future__ import annotations

from pathlib import Path

from ocrquant.data.calibration import sample_calibration
from ocrquant.data.readers import open_dataset
from ocrquant.data.types import READ_POLICY, Dataset, DetTarget, Sample, load_image, readable_images


def sample_root() -> Path:
    """The synthetic sample shipped with the package (``det/`` and ``rec/``), so demos need no download."""
    return Path(__file__).resolve().parent / "sample"


__all__ = [
    "Dataset",
    "DetTarget",
    "READ_POLICY",
    "Sample",
    "load_image",
    "open_dataset",
    "readable_images",
    "sample_calibration",
    "sample_root",
]
