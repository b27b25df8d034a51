"""The data contract: what readers produce and tasks consume.

A dataset is a list of :class:`Sample`; a sample points at an image file and carries the task's
ground truth in ``target``. Images are decoded lazily (``load_image``) so a 500-image set costs no
memory until it is evaluated, and a corrupt file is found, reported and skipped at that point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ocrquant.errors import OcrQuantError


@dataclass
class DetTarget:
    """Ground truth of one detection image: polygons (each a list of [x, y]), texts, don't-care flags."""

    polygons: list[list[list[float]]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    ignore: list[bool] = field(default_factory=list)


@dataclass
class Sample:
    """One evaluation item.

    ``target`` is task specific: :class:`DetTarget` for det, the label string for rec, the class
    index (0 = upright, 1 = rotated 180) for cls. ``rotate180`` asks the loader to turn the image,
    which is how a cls set is derived from a rec set without writing new files.
    """

    key: str
    image_path: Path
    target: Any
    rotate180: bool = False


@dataclass
class Dataset:
    root: Path
    task: str
    format: str
    samples: list[Sample]

    def __len__(self) -> int:
        return len(self.samples)


def load_image(sample: Sample) -> np.ndarray:
    """Decode the sample's image as BGR uint8 (PaddleOCR's convention); raise OcrQuantError if unreadable."""
    image = read_image(sample.image_path)
    if sample.rotate180:
        image = cv2.rotate(image, cv2.ROTATE_180)
    return image


def read_image(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise OcrQuantError("image not found", path)
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise OcrQuantError("cannot decode image (corrupt or not an image)", path)
    return image
