"""The data contract: what readers produce and tasks consume.

A dataset is a list of :class:`Sample`; a sample points at an image file and carries the task's
ground truth in ``target``. Images are decoded lazily (``load_image``) so a 500-image set costs no
memory until it is evaluated, and a corrupt file is found, reported and skipped at that point.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ocrquant.errors import OcrQuantError

log = logging.getLogger("ocrquant")


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


@dataclass
class ReadPolicy:
    """What a command does with a sample whose image cannot be read (missing, corrupt, empty, over the
    pixel limit): skip it, name it in a warning and count it (the default, as ``eval`` always did), or
    stop with that one-line error (``strict``, the ``--strict`` option of every command that reads a
    dataset). The CLI sets it once; every dataset loop reads it through :func:`readable_images`."""

    strict: bool = False


READ_POLICY = ReadPolicy()
_WARNED: set[str] = set()


def skip_unreadable(sample: Sample, exc: OcrQuantError) -> None:
    """Apply :data:`READ_POLICY` to one unreadable sample: raise under ``strict``, else warn once per
    file (calibration reads its images once per pass)."""
    if READ_POLICY.strict:
        raise exc
    if str(sample.image_path) not in _WARNED:
        _WARNED.add(str(sample.image_path))
        log.warning("skipped: %s", exc)


def readable_images(samples: Iterable[Sample]) -> Iterator[tuple[Sample, np.ndarray]]:
    """``(sample, image)`` for every sample whose image decodes; the others are skipped and named (or
    stop the command under ``--strict``), with a count at the end."""
    skipped = total = 0
    for sample in samples:
        total += 1
        try:
            image = load_image(sample)
        except OcrQuantError as exc:
            skip_unreadable(sample, exc)
            skipped += 1
            continue
        yield sample, image
    if skipped:
        log.warning("%d of %d images skipped as unreadable (--strict stops at the first)", skipped, total)


def load_image(sample: Sample) -> np.ndarray:
    """Decode the sample's image as BGR uint8 (PaddleOCR's convention); raise OcrQuantError if unreadable."""
    image = read_image(sample.image_path)
    if sample.rotate180:
        image = cv2.rotate(image, cv2.ROTATE_180)
    return image


#: the most pixels an input image may have (Pillow's decompression-bomb limit): a PNG can declare
#: 60000 x 60000 in a few hundred bytes, and decoding it would take 10 GB. ``OCRQUANT_MAX_IMAGE_PIXELS``
#: raises it for genuinely huge scans.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485


def max_image_pixels() -> int:
    value = os.environ.get("OCRQUANT_MAX_IMAGE_PIXELS", "")
    try:
        return int(value) if value else DEFAULT_MAX_IMAGE_PIXELS
    except ValueError:
        raise OcrQuantError(f"OCRQUANT_MAX_IMAGE_PIXELS={value!r} is not a whole number") from None


def _declared_size(data: np.ndarray) -> tuple[int, int] | None:
    """Width and height from the image header alone (Pillow reads no pixels to say them); None when
    Pillow does not know the format (OpenCV may still decode it)."""

    limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # the limit is ours to apply, with our message
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data.tobytes())) as im:
                return im.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file as BGR uint8; an unreadable, empty or oversized file is an
    :class:`OcrQuantError` naming it, so a dataset loop can skip it and go on."""
    path = Path(path)
    if not path.is_file():
        raise OcrQuantError("image not found", path)
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise OcrQuantError(f"cannot read image ({exc.strerror or exc})", path) from None
    if not data.size:
        raise OcrQuantError("cannot decode image (empty file)", path)
    size = _declared_size(data)
    limit = max_image_pixels()
    if size is not None and size[0] * size[1] > limit:
        raise OcrQuantError(
            f"image of {size[0]}x{size[1]} pixels is over the limit of {limit} pixels "
            "(set OCRQUANT_MAX_IMAGE_PIXELS to allow it)",
            path,
        )
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        reason = " ".join(str(exc).split())[-120:]
        raise OcrQuantError(f"cannot decode image (OpenCV: {reason})", path) from None
    if image is None:
        raise OcrQuantError("cannot decode image (corrupt or not an image)", path)
    return image
