"""Dataset readers: one small reader per on-disk format, chosen by detection or by name.

Users point ocrquant at a folder, not at a format, so every reader can say whether a folder looks like
its format (``detect``) and turn it into a :class:`Dataset` (``read``). New formats are added by
registering a reader, never by growing an if-chain in :func:`open_dataset`.

Every problem with the user's files is an :class:`OcrQuantError` that names the file (and the line for
label files), because "cannot parse ground truth" without a location is useless on a 500-file set.

Detection rule, in registry order (the first reader that claims the folder wins):

* ``icdar2015-det``: ``root/gt/`` holds ``gt_*.txt`` files and ``root/images/`` exists.
* ``icdar2015-rec``: ``root/gt.txt`` exists and its first non-blank line is ``name, "label"``.
* ``paddle-det`` / ``paddle-rec``: a PaddleOCR label file in ``root`` (see :data:`PADDLE_LABEL_NAMES`,
  then any ``*label*.txt`` / ``*_gt*.txt``) whose first non-blank line is ``path<TAB>...``; a JSON list
  after the tab makes it det, anything else rec. ``label_file=`` names the file explicitly.

A ``cls`` dataset is derived from any rec-format folder (each crop upright and turned 180 degrees), and a
folder holding ``det/`` and ``rec/`` sub-folders (like the embedded sample) resolves to the sub-folder of
the requested task.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ocrquant.data.types import Dataset, DetTarget, Sample
from ocrquant.errors import OcrQuantError

TASKS = ("det", "rec", "cls")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
IGNORE_TEXT = "###"
# Names PaddleOCR's tools and docs use for label files, most specific first.
PADDLE_LABEL_NAMES = (
    "det_gt.txt", "det_gt_test.txt", "det_gt_train.txt",
    "rec_gt.txt", "rec_gt_test.txt", "rec_gt_train.txt",
    "Label.txt", "label.txt", "test_label.txt", "train_label.txt",
)  # fmt: skip


@dataclass(frozen=True)
class Reader:
    """A dataset format: ``detect`` says whether a folder is in it, ``read`` loads it for ``task``.

    ``native_task`` is what the files annotate; a rec reader can also serve ``cls`` by derivation.
    """

    name: str
    native_task: str
    detect: Callable[[Path, Path | None], bool]
    read: Callable[[Path, Path | None], list[Sample]]

    def serves(self, task: str) -> bool:
        return task == self.native_task or (task == "cls" and self.native_task == "rec")


READERS: dict[str, Reader] = {}


def register(reader: Reader) -> Reader:
    READERS[reader.name] = reader
    return reader


# --------------------------------------------------------------------------------------------- helpers


def natural_key(text: str) -> list[object]:
    """Sort key that orders img_2 before img_10, as a person listing the folder would expect."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def _read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 text file; a BOM and CRLF line ends (as in the original ICDAR files) are tolerated."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise OcrQuantError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", path) from None
    except OSError as exc:
        raise OcrQuantError(f"cannot read ({exc.strerror})", path) from None
    return text.splitlines()


def _numbered(lines: list[str]) -> Iterator[tuple[int, str]]:
    """Non-blank lines with their 1-based line numbers, for error messages that point at the line."""
    for number, line in enumerate(lines, start=1):
        if line.strip():
            yield number, line


def _first_line(path: Path) -> str | None:
    """First non-blank line of ``path`` (peeking only), or None: detection must be cheap and never raise."""
    try:
        with path.open("r", encoding="utf-8-sig", errors="replace") as handle:
            for _, line in zip(range(50), handle, strict=False):
                if line.strip():
                    return line.rstrip("\r\n")
    except OSError:
        return None
    return None


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _shorten(line: str, limit: int = 60) -> str:
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _resolve_image(name: str, bases: list[Path]) -> Path:
    """The first base folder in which ``name`` exists. A missing image stays a sample (under the first
    base): loading it fails, and every command skips and names it and counts it as skipped, instead of
    the set silently shrinking or one missing file refusing the whole set."""
    for base in bases:
        candidate = base / name
        if candidate.is_file():
            return candidate
    return bases[0] / name


# ---------------------------------------------------------------------------------------- icdar2015-det


def _icdar_det_detect(root: Path, label_file: Path | None) -> bool:
    gt_dir = root / "gt"
    return (root / "images").is_dir() and gt_dir.is_dir() and any(gt_dir.glob("gt_*.txt"))


def parse_icdar_det_gt(path: Path) -> DetTarget:
    """Parse ``x1,y1,...,x4,y4,transcription`` lines; the transcription is everything after the 8th comma."""
    target = DetTarget()
    for line_no, line in _numbered(_read_lines(path)):
        parts = line.split(",", 8)
        if len(parts) != 9:
            raise OcrQuantError(
                f"line {line_no}: expected 8 coordinates and a transcription, got '{_shorten(line)}'", path
            )
        try:
            coords = [float(value) for value in parts[:8]]
        except ValueError:
            raise OcrQuantError(
                f"line {line_no}: coordinates are not numbers in '{_shorten(line)}'", path
            ) from None
        text = parts[8]
        target.polygons.append([[coords[i], coords[i + 1]] for i in range(0, 8, 2)])
        target.texts.append(text)
        target.ignore.append(text == IGNORE_TEXT)
    return target


def _icdar_det_read(root: Path, label_file: Path | None) -> list[Sample]:
    images = sorted(
        (p for p in (root / "images").iterdir() if _is_image(p)), key=lambda p: natural_key(p.name)
    )
    samples = []
    for image in images:
        gt_path = root / "gt" / f"gt_{image.stem}.txt"
        if not gt_path.is_file():
            raise OcrQuantError(f"no ground truth file {gt_path.name} in {gt_path.parent}", image)
        samples.append(Sample(key=image.name, image_path=image, target=parse_icdar_det_gt(gt_path)))
    # ground truth whose image is missing: a sample that fails to load (skipped and named), not a
    # silently smaller test set
    stems = {image.stem for image in images}
    for gt_path in sorted((root / "gt").glob("gt_*.txt"), key=lambda p: natural_key(p.name)):
        stem = gt_path.stem[3:]
        if stem not in stems:
            missing = root / "images" / f"{stem}.jpg"
            samples.append(Sample(key=missing.name, image_path=missing, target=parse_icdar_det_gt(gt_path)))
    return samples


register(Reader("icdar2015-det", "det", _icdar_det_detect, _icdar_det_read))


# ---------------------------------------------------------------------------------------- icdar2015-rec

_ICDAR_REC_LINE = re.compile(r'^\s*([^,"]+?)\s*,\s*"')


def _icdar_rec_detect(root: Path, label_file: Path | None) -> bool:
    gt = label_file or root / "gt.txt"
    line = _first_line(gt) if gt.is_file() else None
    return line is not None and _ICDAR_REC_LINE.match(line) is not None and line.rstrip().endswith('"')


def _icdar_rec_read(root: Path, label_file: Path | None) -> list[Sample]:
    gt = label_file or root / "gt.txt"
    if not gt.is_file():
        raise OcrQuantError("ground truth file gt.txt not found", gt)
    bases = [root / "images", root, gt.parent]
    samples = []
    for line_no, line in _numbered(_read_lines(gt)):
        match = _ICDAR_REC_LINE.match(line)
        first, last = line.find('"'), line.rfind('"')
        if match is None or last <= first:
            raise OcrQuantError(f"line {line_no}: expected name, \"label\" but got '{_shorten(line)}'", gt)
        name = match.group(1)
        image = _resolve_image(name, bases)
        samples.append(Sample(key=name, image_path=image, target=line[first + 1 : last]))
    return samples


register(Reader("icdar2015-rec", "rec", _icdar_rec_detect, _icdar_rec_read))


# ------------------------------------------------------------------------------------------ paddle-*


def _paddle_label_candidates(root: Path) -> list[Path]:
    """Label files in ``root``: the well-known names first, then anything that looks like a label list."""
    known = [root / name for name in PADDLE_LABEL_NAMES if (root / name).is_file()]
    others = sorted(
        {p for pattern in ("*label*.txt", "*Label*.txt", "*_gt*.txt") for p in root.glob(pattern)}
        - set(known),
        key=lambda p: natural_key(p.name),
    )
    return known + others


def _paddle_kind(path: Path) -> str | None:
    """'det' if the first line is ``path<TAB>[json list]``, 'rec' if ``path<TAB>label``, else None."""
    line = _first_line(path)
    if line is None or "\t" not in line:
        return None
    name, rest = line.split("\t", 1)
    if not name.strip():
        return None
    if rest.lstrip().startswith("["):
        try:
            return "det" if isinstance(json.loads(rest), list) else "rec"
        except json.JSONDecodeError:
            return "rec"
    return "rec"


def _paddle_label(root: Path, label_file: Path | None, kind: str) -> Path | None:
    if label_file is not None:
        return label_file if _paddle_kind(label_file) == kind else None
    return next((p for p in _paddle_label_candidates(root) if _paddle_kind(p) == kind), None)


def _paddle_bases(root: Path, label: Path) -> list[Path]:
    """Bases for relative paths: the root, the label file's folder, then (PPOCRLabel) the root's parent."""
    bases = [root]
    for extra in (label.parent, root.parent):
        if extra not in bases:
            bases.append(extra)
    return bases


def _paddle_lines(root: Path, label_file: Path | None, kind: str) -> tuple[Path, Iterator[tuple[int, str]]]:
    label = _paddle_label(root, label_file, kind)
    if label is None:
        where = label_file or root
        raise OcrQuantError(
            f"no PaddleOCR {kind} label file (path<TAB>{'json' if kind == 'det' else 'label'})", where
        )
    return label, _numbered(_read_lines(label))


def _split_tab(line: str, line_no: int, label: Path) -> tuple[str, str]:
    if "\t" not in line:
        raise OcrQuantError(f"line {line_no}: expected path<TAB>annotation, got '{_shorten(line)}'", label)
    name, rest = line.split("\t", 1)
    return name.strip(), rest


def _paddle_det_read(root: Path, label_file: Path | None) -> list[Sample]:
    label, lines = _paddle_lines(root, label_file, "det")
    bases = _paddle_bases(root, label)
    samples = []
    for line_no, line in lines:
        name, rest = _split_tab(line, line_no, label)
        try:
            entries = json.loads(rest)
            target = DetTarget()
            for entry in entries:
                points = [[float(x), float(y)] for x, y in entry["points"]]
                if len(points) < 3:
                    raise ValueError("a polygon needs at least 3 points")
                text = str(entry.get("transcription", ""))
                target.polygons.append(points)
                target.texts.append(text)
                target.ignore.append(text == IGNORE_TEXT or bool(entry.get("difficult", False)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise OcrQuantError(f"line {line_no}: bad detection annotation ({exc})", label) from None
        image = _resolve_image(name, bases)
        samples.append(Sample(key=name, image_path=image, target=target))
    return samples


def _paddle_rec_read(root: Path, label_file: Path | None) -> list[Sample]:
    label, lines = _paddle_lines(root, label_file, "rec")
    bases = _paddle_bases(root, label)
    samples = []
    for line_no, line in lines:
        name, text = _split_tab(line, line_no, label)
        image = _resolve_image(name, bases)
        samples.append(Sample(key=name, image_path=image, target=text))
    return samples


register(Reader("paddle-det", "det", lambda r, f: _paddle_label(r, f, "det") is not None, _paddle_det_read))
register(Reader("paddle-rec", "rec", lambda r, f: _paddle_label(r, f, "rec") is not None, _paddle_rec_read))


# ------------------------------------------------------------------------------------------ public API


def derive_cls(samples: list[Sample]) -> list[Sample]:
    """Each rec crop upright (class 0) and turned 180 degrees (class 1); no files are written."""
    derived = []
    for sample in samples:
        derived.append(Sample(key=f"{sample.key}@0", image_path=sample.image_path, target=0))
        derived.append(
            Sample(key=f"{sample.key}@180", image_path=sample.image_path, target=1, rotate180=True)
        )
    return derived


def detect_format(root: str | Path, task: str, label_file: str | Path | None = None) -> str | None:
    """Name of the first registered format that claims ``root`` for ``task``, or None."""
    root = Path(root)
    label = Path(label_file) if label_file is not None else None
    for reader in READERS.values():
        if reader.serves(task) and reader.detect(root, label):
            return reader.name
    return None


def ground_truth_task(task: str) -> str:
    """A task variant such as ``det-craft`` reads the ground truth of its family (``det``)."""
    family = task.split("-", 1)[0]
    return family if family in TASKS else task


def open_dataset(
    root: str | Path, task: str, fmt: str | None = None, label_file: str | Path | None = None
) -> Dataset:
    """Read the dataset at ``root`` for ``task`` ('det', 'rec' or 'cls').

    ``fmt`` forces a registered format (see :data:`READERS`); without it the format is detected. A
    ``label_file`` names a label file that is not at its conventional place (paths inside it stay
    relative to ``root``).
    """
    root = Path(root)
    task = ground_truth_task(task)
    if task not in TASKS:
        raise OcrQuantError(f"unknown task '{task}' (choose from {', '.join(TASKS)})")
    if not root.is_dir():
        raise OcrQuantError("dataset directory not found" if not root.exists() else "not a directory", root)
    label = Path(label_file) if label_file is not None else None
    if label is not None and not label.is_file():
        raise OcrQuantError("label file not found", label)

    if fmt is not None:
        reader = READERS.get(fmt)
        if reader is None:
            raise OcrQuantError(f"unknown dataset format '{fmt}' (choose from {', '.join(READERS)})")
        if not reader.serves(task):
            raise OcrQuantError(f"format '{fmt}' holds {reader.native_task} data, not {task}", root)
    else:
        name = detect_format(root, task, label)
        sub = root / ("det" if task == "det" else "rec")
        if name is None and label is None and sub.is_dir():
            return open_dataset(sub, task)
        if name is None:
            raise OcrQuantError(_no_format_message(root, task), root)
        reader = READERS[name]

    samples = reader.read(root, label)
    if not samples:
        raise OcrQuantError(f"no images in this {reader.name} dataset", root)
    if task == "cls":
        samples = derive_cls(samples)
    return Dataset(root=root, task=task, format=reader.name, samples=samples)


def _no_format_message(root: Path, task: str) -> str:
    has_images = any(_is_image(p) for p in root.rglob("*"))
    formats = ", ".join(name for name, reader in READERS.items() if reader.serves(task))
    if not has_images:
        return f"no images found, so no {task} dataset here (formats: {formats})"
    return f"no {task} dataset format recognised (formats: {formats}; force one with --format)"


from ocrquant.data import curved as _curved  # noqa: E402,F401  (registers ctw1500, totaltext)
