"""Ground-truth readers for the curved-text benchmarks' formats: CTW1500 and Total-Text.

Curved text is annotated with polygons of many points; :class:`DetMetric` scores polygons of any
length, so these readers only have to turn each format into :class:`DetTarget` polygons. Layout:
an image folder and a ground-truth folder side by side in the dataset root (the names both
benchmarks ship with are recognised, see :data:`IMAGE_DIRS` / :data:`GT_DIRS`), one text file per
image.

``ctw1500`` — one region per line, either of:

* absolute points (the current CTW1500 release and most toolkits): ``x1,y1,x2,y2,...,xn,yn,####text``;
  everything after the first ``####`` is the transcription (``###`` = don't care);
* the original offsets form: 32 integers ``xmin,ymin,xmax,ymax,dx1,dy1,...,dx14,dy14`` where point
  ``i`` is ``(xmin + dx_i, ymin + dy_i)`` (no transcription).

GT file for image ``1001.jpg``: ``1001.txt``, ``gt_1001.txt`` or zero-padded ``0001001.txt`` / ``001001.txt``.

``totaltext`` — Total-Text's text ground truth, one region per record (a record may wrap over several
lines, as numpy printed it)::

    x: [[115 503 494 115]], y: [[322 346 426 404]], ornt: [u'h'], transcriptions: [u'text']

Transcription ``#`` (or orientation ``#``) marks a don't-care region. GT file for ``img11.jpg``:
``poly_gt_img11.txt`` (as shipped), ``gt_img11.txt`` or ``img11.txt``.

Both readers detect their folder by the *content* of one GT file, so they never claim an ICDAR2015
folder (8 coordinates + text) or each other's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ocrquant.data.readers import (
    IGNORE_TEXT,
    Reader,
    _first_line,
    _is_image,
    _numbered,
    _read_lines,
    _shorten,
    natural_key,
    register,
)
from ocrquant.data.types import DetTarget, Sample
from ocrquant.errors import OcrQuantError

IMAGE_DIRS = ("images", "Images", "test_images", "train_images", "imgs", "Test", "Train")
GT_DIRS = ("gt", "Groundtruth", "groundtruth", "test_labels", "train_labels", "labels", "annotations")
CTW_MARK = "####"
CTW_OFFSET_VALUES = 32  # xmin, ymin, xmax, ymax + 14 (dx, dy) pairs
TOTALTEXT_DONT_CARE = frozenset({"#", IGNORE_TEXT})


def _layout(root: Path) -> tuple[Path, Path] | None:
    """(image folder, GT folder) under ``root``, or None."""
    images = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), None)
    gt = next((root / d for d in GT_DIRS if (root / d).is_dir()), None)
    return (images, gt) if images is not None and gt is not None else None


def _numbers(fields: list[str], path: Path, line_no: int, line: str) -> list[float]:
    try:
        return [float(v) for v in fields]
    except ValueError:
        message = f"line {line_no}: coordinates are not numbers in '{_shorten(line)}'"
        raise OcrQuantError(message, path) from None


def _pairs(values: list[float]) -> list[list[float]]:
    return [[values[i], values[i + 1]] for i in range(0, len(values), 2)]


# ---------------------------------------------------------------------------------------------- ctw1500


def parse_ctw1500_gt(path: Path) -> DetTarget:
    """Parse a CTW1500 GT file (absolute ``...,####text`` lines or the 32-value offsets form)."""
    target = DetTarget()
    for line_no, line in _numbered(_read_lines(path)):
        if CTW_MARK in line:
            coords, text = line.split(CTW_MARK, 1)
            fields = [v for v in coords.strip().rstrip(",").split(",") if v.strip()]
            values = _numbers(fields, path, line_no, line)
            if len(values) < 6 or len(values) % 2:
                raise OcrQuantError(
                    f"line {line_no}: expected an even number (>= 6) of coordinates before '####', "
                    f"got {len(values)}",
                    path,
                )
            points = _pairs(values)
        else:
            values = _numbers([v for v in line.strip().rstrip(",").split(",")], path, line_no, line)
            if len(values) != CTW_OFFSET_VALUES:
                raise OcrQuantError(
                    f"line {line_no}: expected 'x1,y1,...,xn,yn,####text' or 32 values "
                    f"(xmin,ymin,xmax,ymax + 14 offsets), got '{_shorten(line)}'",
                    path,
                )
            xmin, ymin = values[0], values[1]
            points = [[xmin + dx, ymin + dy] for dx, dy in _pairs(values[4:])]
            text = ""
        target.polygons.append(points)
        target.texts.append(text)
        target.ignore.append(text == IGNORE_TEXT)
    return target


def _ctw_signature(line: str) -> bool:
    if CTW_MARK in line:
        head = line.split(CTW_MARK, 1)[0].strip().rstrip(",")
        fields = head.split(",")
    else:
        fields = line.strip().rstrip(",").split(",")
        if len(fields) != CTW_OFFSET_VALUES:
            return False
    return len(fields) >= 6 and all(re.fullmatch(r"\s*-?\d+(\.\d+)?\s*", f) for f in fields)


def _ctw_gt_names(stem: str) -> list[str]:
    names = [f"{stem}.txt", f"gt_{stem}.txt"]
    if stem.isdigit():
        names += [f"{int(stem):07d}.txt", f"{int(stem):06d}.txt"]
    return names


# -------------------------------------------------------------------------------------------- totaltext

_TT_RECORD = re.compile(
    r"x:\s*\[\[(?P<x>[^\]]*)\]\]\s*,\s*y:\s*\[\[(?P<y>[^\]]*)\]\]\s*,\s*ornt:\s*\[(?P<ornt>[^\]]*)\]\s*,"
    r"\s*transcriptions:\s*\[(?P<text>.*?)\]\s*$",
    re.DOTALL,
)
_TT_STRING = re.compile(r"""^\s*u?(?P<q>['"])(?P<s>.*)(?P=q)\s*$""", re.DOTALL)


def _tt_string(raw: str) -> str:
    """``u'text'`` / ``'text'`` / ``"text"`` -> text (Total-Text wrote Python 2 reprs)."""
    match = _TT_STRING.match(raw)
    return match.group("s") if match else raw.strip()


def parse_totaltext_gt(path: Path) -> DetTarget:
    """Parse a Total-Text GT file; records start at ``x:`` and may span several lines."""
    records: list[tuple[int, str]] = []
    for line_no, line in _numbered(_read_lines(path)):
        if line.lstrip().startswith("x:"):
            records.append((line_no, line.strip()))
        elif records:
            records[-1] = (records[-1][0], records[-1][1] + " " + line.strip())
        else:
            message = f"line {line_no}: expected a record starting with 'x: [[', got '{_shorten(line)}'"
            raise OcrQuantError(message, path)
    target = DetTarget()
    for line_no, record in records:
        match = _TT_RECORD.match(record)
        if match is None:
            raise OcrQuantError(
                f"line {line_no}: expected 'x: [[...]], y: [[...]], ornt: [...], transcriptions: [...]', "
                f"got '{_shorten(record)}'",
                path,
            )
        xs = _numbers(match.group("x").replace(",", " ").split(), path, line_no, record)
        ys = _numbers(match.group("y").replace(",", " ").split(), path, line_no, record)
        if len(xs) != len(ys) or len(xs) < 3:
            raise OcrQuantError(
                f"line {line_no}: x and y need the same number (>= 3) of values, got {len(xs)} and {len(ys)}",
                path,
            )
        text, ornt = _tt_string(match.group("text")), _tt_string(match.group("ornt"))
        target.polygons.append([[x, y] for x, y in zip(xs, ys, strict=True)])
        target.texts.append(text)
        target.ignore.append(text in TOTALTEXT_DONT_CARE or ornt == "#")
    return target


def _tt_signature(line: str) -> bool:
    return re.match(r"\s*x:\s*\[\[", line) is not None


def _tt_gt_names(stem: str) -> list[str]:
    return [f"poly_gt_{stem}.txt", f"gt_{stem}.txt", f"{stem}.txt"]


# ---------------------------------------------------------------------------------------------- readers


@dataclass(frozen=True)
class CurvedFormat:
    """A one-GT-file-per-image polygon format: file naming, a first-line signature and a parser."""

    name: str
    gt_names: Callable[[str], list[str]]
    signature: Callable[[str], bool]
    parse: Callable[[Path], DetTarget]

    def detect(self, root: Path, label_file: Path | None) -> bool:
        """Cheap: look at the first GT file of the folder only (never raises)."""
        if label_file is not None:
            return False
        layout = _layout(root)
        if layout is None:
            return False
        try:
            first = next((p for p in sorted(layout[1].iterdir()) if p.suffix == ".txt" and p.is_file()), None)
        except OSError:
            return False
        line = _first_line(first) if first is not None else None
        return line is not None and self.signature(line)

    def read(self, root: Path, label_file: Path | None) -> list[Sample]:
        layout = _layout(root)
        if layout is None:
            raise OcrQuantError(
                f"{self.name}: expected an image folder ({', '.join(IMAGE_DIRS[:3])}...) and a GT folder "
                f"({', '.join(GT_DIRS[:3])}...)",
                root,
            )
        images_dir, gt_dir = layout
        images = sorted((p for p in images_dir.iterdir() if _is_image(p)), key=lambda p: natural_key(p.name))
        samples = []
        for image in images:
            names = self.gt_names(image.stem)
            gt_path = next((gt_dir / n for n in names if (gt_dir / n).is_file()), None)
            if gt_path is None:
                raise OcrQuantError(f"no ground truth file ({' or '.join(names)}) in {gt_dir}", image)
            samples.append(Sample(key=image.name, image_path=image, target=self.parse(gt_path)))
        return samples


CTW1500 = CurvedFormat("ctw1500", _ctw_gt_names, _ctw_signature, parse_ctw1500_gt)
TOTALTEXT = CurvedFormat("totaltext", _tt_gt_names, _tt_signature, parse_totaltext_gt)

for _fmt in (CTW1500, TOTALTEXT):
    register(Reader(_fmt.name, "det", _fmt.detect, _fmt.read))

__all__ = ["CTW1500", "TOTALTEXT", "CurvedFormat", "parse_ctw1500_gt", "parse_totaltext_gt"]
