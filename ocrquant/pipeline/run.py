"""OCR over files: one image or a folder of images, with optional pictures and a JSON report.

An image without text is a normal result (no lines). In a folder, an image that cannot be decoded is
reported and skipped so one bad file does not cost the whole run; a single image given by name that
cannot be read is the user's error and raises.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ocrquant.data.readers import IMAGE_SUFFIXES, natural_key
from ocrquant.data.types import read_image
from ocrquant.errors import OcrQuantError
from ocrquant.fileio import write_json_atomic
from ocrquant.pipeline.core import OcrPipeline
from ocrquant.pipeline.draw import save_drawing

log = logging.getLogger("ocrquant")


def list_images(source: str | Path) -> list[Path]:
    """``source`` itself if it is a file, else the images inside the folder, in natural name order."""
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise OcrQuantError("no such image or folder", source)
    images = sorted(
        (p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: natural_key(p.name),
    )
    if not images:
        raise OcrQuantError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder", source)
    return images


def _drawing_path(draw: Path, image: Path, single: bool) -> Path:
    """``--draw``: a file for a single image (when it has an image suffix), else a folder of
    ``<stem>_ocr.png`` pictures."""
    if single and draw.suffix.lower() in IMAGE_SUFFIXES and not draw.is_dir():
        return draw
    if draw.suffix.lower() in IMAGE_SUFFIXES and not draw.is_dir():
        raise OcrQuantError("--draw must be a folder when reading a folder of images", draw)
    return draw / f"{image.stem}_ocr.png"


def ocr_images(
    pipeline: OcrPipeline,
    source: str | Path,
    *,
    draw: str | Path | None = None,
    json_out: str | Path | None = None,
    font: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """OCR ``source`` (image or folder); returns (and with ``json_out`` writes) the report:
    ``{"models", "images": [{"image", "width", "height", "lines", "timing_ms", "dropped"}], "skipped"}``."""

    source = Path(source)
    paths = list_images(source)
    single = source.is_file()
    if font is not None and not Path(font).is_file():
        raise OcrQuantError("font file not found", font)
    if draw is not None:
        _drawing_path(Path(draw), paths[0], single)  # a bad --draw fails before any work is done
    report: dict[str, Any] = {"source": str(source), **pipeline.describe(), "images": [], "skipped": []}
    drawn: list[str] = []
    for path in tqdm(paths, desc="ocr", unit="img", disable=not progress or single, leave=False):
        try:
            image = read_image(path)
        except OcrQuantError as exc:
            if single:
                raise
            log.warning("skipped: %s", exc)
            report["skipped"].append({"image": str(path), "error": str(exc)})
            continue
        result = pipeline.run(image)
        report["images"].append({
            "image": str(path),
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
            **result.to_json(),
        })  # fmt: skip
        if draw is not None:
            out = _drawing_path(Path(draw), path, single)
            save_drawing(out, image, result.lines, str(font) if font else None)
            drawn.append(str(out))
    if json_out is not None:
        write_json_atomic(json_out, report)
    report["drawn"] = drawn
    return report
