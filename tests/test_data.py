"""Dataset readers, calibration subsets, the synthetic generator and the embedded sample."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from ocrquant.data import (
    DetTarget,
    Sample,
    load_image,
    open_dataset,
    sample_calibration,
    sample_root,
)
from ocrquant.data.readers import READERS, detect_format
from ocrquant.data.synth import generate
from ocrquant.errors import OcrQuantError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "icdar2015"


def _image(path: Path, size: tuple[int, int] = (40, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    image = np.full((height, width, 3), 200, np.uint8)
    image[:, : width // 2] = 30  # asymmetric, so a 180-degree turn is visible
    assert cv2.imwrite(str(path), image)
    return path


def _icdar_det(root: Path, gts: dict[str, bytes]) -> Path:
    for stem, content in gts.items():
        _image(root / "images" / f"{stem}.jpg")
        (root / "gt").mkdir(parents=True, exist_ok=True)
        (root / "gt" / f"gt_{stem}.txt").write_bytes(content)
    return root


# ------------------------------------------------------------------------------------ icdar2015-det


def test_icdar_det_bom_crlf_commas_and_dont_care(tmp_path: Path) -> None:
    gt = "\ufeff1,2,30,2,30,20,1,20,$5,50\r\n5,5,9,5,9,9,5,9,###\r\n\r\n0,0,4,0,4,4,0,4,B1,\r\n"
    root = _icdar_det(tmp_path / "det", {"img_1": gt.encode("utf-8")})
    ds = open_dataset(root, "det")
    assert (ds.format, ds.task, len(ds)) == ("icdar2015-det", "det", 1)
    target = ds.samples[0].target
    assert isinstance(target, DetTarget)
    assert target.texts == ["$5,50", "###", "B1,"]
    assert target.ignore == [False, True, False]
    assert target.polygons[0] == [[1, 2], [30, 2], [30, 20], [1, 20]]


def test_icdar_det_natural_order(tmp_path: Path) -> None:
    line = b"0,0,4,0,4,4,0,4,a\n"
    root = _icdar_det(tmp_path, {f"img_{i}": line for i in (10, 2, 1)})
    assert [s.key for s in open_dataset(root, "det").samples] == ["img_1.jpg", "img_2.jpg", "img_10.jpg"]


def test_icdar_det_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    root = _icdar_det(tmp_path, {"img_1": b"0,0,4,0,4,4,0,4,ok\n1,2,3,word\n"})
    with pytest.raises(OcrQuantError, match=r"gt_img_1\.txt: line 2: expected 8 coordinates"):
        open_dataset(root, "det")
    (root / "gt" / "gt_img_1.txt").write_text("0,0,x,0,4,4,0,4,ok\n")
    with pytest.raises(OcrQuantError, match=r"gt_img_1\.txt: line 1: coordinates are not numbers"):
        open_dataset(root, "det")


def test_icdar_det_image_without_gt(tmp_path: Path) -> None:
    root = _icdar_det(tmp_path, {"img_1": b"0,0,4,0,4,4,0,4,a\n"})
    _image(root / "images" / "img_7.jpg")
    with pytest.raises(OcrQuantError, match=r"img_7\.jpg: no ground truth file gt_img_7\.txt"):
        open_dataset(root, "det")


# ------------------------------------------------------------------------------------ icdar2015-rec


def test_icdar_rec_quotes_commas_spaces_and_layouts(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    _image(root / "images" / "word_1.png")
    _image(root / "word_2.png")  # beside gt.txt is accepted too
    _image(root / "images" / "word_10.png")
    gt = '\ufeffword_1.png, "JOINT"\r\nword_2.png, "say "hi", ok"\r\nword_10.png, "a, b c"\r\n'
    (root / "gt.txt").write_bytes(gt.encode("utf-8"))
    ds = open_dataset(root, "rec")
    assert ds.format == "icdar2015-rec"
    assert [(s.key, s.target) for s in ds.samples] == [
        ("word_1.png", "JOINT"),
        ("word_2.png", 'say "hi", ok'),
        ("word_10.png", "a, b c"),
    ]
    assert ds.samples[1].image_path == root / "word_2.png"


def test_icdar_rec_errors(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "word_1.png")
    (tmp_path / "gt.txt").write_text('word_1.png, "ok"\nword_2.png, "missing"\n')
    # a missing image stays a sample: loading it fails with its name, so commands skip and count it
    missing = open_dataset(tmp_path, "rec").samples[1]
    with pytest.raises(OcrQuantError, match=r"word_2\.png: image not found"):
        load_image(missing)
    (tmp_path / "gt.txt").write_text('word_1.png, "ok"\nword_1.png no quotes\n')
    with pytest.raises(OcrQuantError, match=r"gt\.txt: line 2: expected name"):
        open_dataset(tmp_path, "rec", fmt="icdar2015-rec")


# ------------------------------------------------------------------------------------------ paddle


def test_paddle_det_and_rec(tmp_path: Path) -> None:
    _image(tmp_path / "imgs" / "a.jpg")
    _image(tmp_path / "imgs" / "b.jpg")
    entries = [
        {"transcription": "Hello, world", "points": [[1, 2], [10, 2], [10, 8], [1, 8]]},
        {"transcription": "###", "points": [[0, 0], [3, 0], [3, 3], [0, 3]]},
    ]
    (tmp_path / "det_gt.txt").write_text(
        f"imgs/a.jpg\t{json.dumps(entries)}\nimgs/b.jpg\t[]\n", encoding="utf-8"
    )
    (tmp_path / "rec_gt.txt").write_text(
        "imgs/a.jpg\tHello world\nimgs/b.jpg\ttab\tinside\n", encoding="utf-8"
    )

    det = open_dataset(tmp_path, "det")
    assert det.format == "paddle-det"
    assert det.samples[0].target.texts == ["Hello, world", "###"]
    assert det.samples[0].target.ignore == [False, True]
    assert det.samples[1].target.polygons == []

    rec = open_dataset(tmp_path, "rec")
    assert rec.format == "paddle-rec"
    assert [s.target for s in rec.samples] == ["Hello world", "tab\tinside"]


def test_paddle_label_file_and_forced_format(tmp_path: Path) -> None:
    _image(tmp_path / "x.png")
    labels = tmp_path / "elsewhere" / "my_labels.list"
    labels.parent.mkdir()
    labels.write_text("x.png\tEXIT\n")
    assert detect_format(tmp_path, "rec") is None
    ds = open_dataset(tmp_path, "rec", fmt="paddle-rec", label_file=labels)
    assert [(s.key, s.target) for s in ds.samples] == [("x.png", "EXIT")]
    assert open_dataset(tmp_path, "rec", label_file=labels).format == "paddle-rec"
    with pytest.raises(OcrQuantError, match="unknown dataset format 'coco'"):
        open_dataset(tmp_path, "rec", fmt="coco")
    with pytest.raises(OcrQuantError, match="holds det data, not rec"):
        open_dataset(tmp_path, "rec", fmt="paddle-det")


def test_paddle_bad_json_names_line(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg")
    (tmp_path / "label.txt").write_text('a.jpg\t[{"points": [[0, 0], [1, 1]]}]\na.jpg\t[{"points": 3}]\n')
    with pytest.raises(OcrQuantError, match=r"label\.txt: line 1: bad detection annotation"):
        open_dataset(tmp_path, "det")


# --------------------------------------------------------------------------------- cls, errors


def test_cls_derived_from_rec(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "word_1.png")
    (tmp_path / "gt.txt").write_text('word_1.png, "up"\n')
    ds = open_dataset(tmp_path, "cls")
    assert (ds.task, ds.format) == ("cls", "icdar2015-rec")
    assert [(s.key, s.target, s.rotate180) for s in ds.samples] == [
        ("word_1.png@0", 0, False),
        ("word_1.png@180", 1, True),
    ]
    upright, turned = (load_image(s) for s in ds.samples)
    assert np.array_equal(turned, cv2.rotate(upright, cv2.ROTATE_180))
    assert not np.array_equal(turned, upright)


def test_directory_errors(tmp_path: Path) -> None:
    with pytest.raises(OcrQuantError, match="no images found") as info:
        open_dataset(tmp_path, "det")
    assert info.value.path == tmp_path
    with pytest.raises(OcrQuantError, match="dataset directory not found"):
        open_dataset(tmp_path / "nope", "rec")
    with pytest.raises(OcrQuantError, match="unknown task 'ocr'"):
        open_dataset(tmp_path, "ocr")
    _image(tmp_path / "lonely.jpg")
    with pytest.raises(OcrQuantError, match="no rec dataset format recognised"):
        open_dataset(tmp_path, "rec")


def test_corrupt_image_raises(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(OcrQuantError, match=r"bad\.jpg: cannot decode image"):
        load_image(Sample(key="bad", image_path=bad, target=""))


def test_registry_names() -> None:
    assert {"icdar2015-det", "icdar2015-rec", "paddle-det", "paddle-rec"} <= set(READERS)


# ------------------------------------------------------------------------------------ calibration


def test_calibration_subset(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from ocrquant.data.types import Dataset

    samples = [Sample(key=str(i), image_path=tmp_path / f"{i}.png", target="") for i in range(20)]
    ds = Dataset(root=tmp_path, task="rec", format="test", samples=samples)
    first = sample_calibration(ds, 5, seed=3)
    assert first == sample_calibration(ds, 5, seed=3)
    assert len({s.key for s in first}) == 5
    assert [s.key for s in first] != [s.key for s in sample_calibration(ds, 5, seed=4)]
    with caplog.at_level(logging.WARNING, logger="ocrquant"):
        assert len(sample_calibration(ds, 50)) == 20
    assert "only 20" in caplog.text
    with pytest.raises(OcrQuantError, match="must be positive"):
        sample_calibration(ds, 0)


def test_extended_calibration_keeps_the_pick_first_and_never_takes_held_out_images(tmp_path: Path) -> None:
    """A cls set reads each crop twice (upright, turned): holding out a crop holds out both turns."""
    from ocrquant.data.calibration import extend_calibration, image_id
    from ocrquant.data.types import Dataset

    samples = [
        Sample(key=f"{i}@{turn}", image_path=tmp_path / f"{i}.png", target=turn // 180, rotate180=turn == 180)
        for i in range(30)
        for turn in (0, 180)
    ]
    ds = Dataset(root=tmp_path, task="cls", format="test", samples=samples)
    pick = sample_calibration(ds, 6, seed=0)
    holdout = {image_id(s) for s in samples[:20]}  # crops 0-9, both turns
    more = extend_calibration(ds, pick, 25, seed=0, holdout=holdout)
    assert more[: len(pick)] == pick and len(more) == 25
    extra = more[len(pick) :]
    assert not {image_id(s) for s in extra} & holdout
    assert not {s.key for s in extra} & {s.key for s in pick}
    assert extra == extend_calibration(ds, pick, 25, seed=0, holdout=holdout)[len(pick) :]  # seeded
    # asking for more than there is returns what there is
    everything = extend_calibration(ds, pick, 1000, holdout=holdout)
    assert len(everything) == len(pick) + sum(image_id(s) not in holdout for s in samples if s not in pick)
    assert extend_calibration(ds, pick, 3) == pick  # never fewer than the pick


# ------------------------------------------------------------------------------------------ synth


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synth_deterministic_and_readable(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", n_det=2, n_rec=4, seed=7)
    b = generate(tmp_path / "b", n_det=2, n_rec=4, seed=7)
    assert _tree(a) == _tree(b)
    assert _tree(generate(tmp_path / "c", n_det=2, n_rec=4, seed=8)) != _tree(a)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind

    det = open_dataset(a / "det", "det")
    assert len(det) == 2
    for sample in det.samples:
        height, width = load_image(sample).shape[:2]
        assert (width, height) == (640, 360)
        assert sum(not i for i in sample.target.ignore) >= 3 and any(sample.target.ignore)
        for polygon in sample.target.polygons:
            pts = np.array(polygon)
            assert pts.shape == (4, 2)
            assert (pts >= 0).all() and (pts[:, 0] <= width - 1).all() and (pts[:, 1] <= height - 1).all()
            x, y = pts[:, 0], pts[:, 1]
            assert 0.5 * (x @ np.roll(y, -1) - y @ np.roll(x, -1)) > 0  # clockwise on screen
    rec = open_dataset(a / "rec", "rec")
    assert len(rec) == 4 and all(s.target for s in rec.samples)


def test_synth_refuses_to_clobber(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OcrQuantError, match="not empty"):
        generate(out, n_det=0, n_rec=1)
    generate(out, n_det=0, n_rec=1, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "rec" / "gt.txt").is_file()


def test_embedded_sample() -> None:
    root = sample_root()
    assert len(open_dataset(root / "det", "det")) == 8
    assert len(open_dataset(root, "rec")) == 48  # a folder with det/ + rec/ resolves by task
    assert sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) < 1.5 * 1024 * 1024


# ---------------------------------------------------------------------------------- real ICDAR


@pytest.mark.shared
@pytest.mark.skipif(not SHARED.is_dir(), reason=f"real ICDAR 2015 data not present at {SHARED}")
def test_real_icdar2015_counts() -> None:
    det = open_dataset(SHARED / "det_test", "det")
    assert det.format == "icdar2015-det" and len(det) == 500
    ignore = [flag for s in det.samples for flag in s.target.ignore]
    assert len(ignore) == 5230
    assert ignore.count(False) == 2077
    rec = open_dataset(SHARED / "rec_test", "rec")
    assert rec.format == "icdar2015-rec" and len(rec) == 2077
