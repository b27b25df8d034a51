"""Curved text: DetMetric on many-point polygons, and the CTW1500 / Total-Text ground-truth readers.

The IoU protocol has no split/merge credit, and it must treat a 20-point arc as the arc, not as its
bounding box; these cases pin both. The readers are checked on hand-made files in each format
(including the awkward bits: offsets form, multi-line records, don't-care marks) and must feed the
metric end to end.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from shapely.geometry import Polygon

from ocrquant.data import open_dataset
from ocrquant.data.curved import CTW1500, parse_ctw1500_gt, parse_totaltext_gt
from ocrquant.data.curved import TOTALTEXT as TOTALTEXT_FORMAT
from ocrquant.data.readers import detect_format
from ocrquant.data.types import DetTarget
from ocrquant.errors import OcrQuantError
from ocrquant.metrics.det_iou import DetMetric, evaluate_image


def arc(
    cx: float, cy: float, r_in: float, r_out: float, a0: float, a1: float, n: int = 10
) -> list[list[float]]:
    """A curved text band: ``n`` points along the outer arc, then ``n`` back along the inner arc."""
    angles = np.linspace(math.radians(a0), math.radians(a1), n)
    outer = [[cx + r_out * math.cos(a), cy - r_out * math.sin(a)] for a in angles]
    inner = [[cx + r_in * math.cos(a), cy - r_in * math.sin(a)] for a in angles[::-1]]
    return outer + inner


def iou(a: list[list[float]], b: list[list[float]]) -> float:
    pa, pb = Polygon(a), Polygon(b)
    return pa.intersection(pb).area / pa.union(pb).area


BAND = arc(200, 200, 80, 110, 20, 160)  # a 20-point arch of text


# --------------------------------------------------------------------------------------- metric


def test_curved_polygon_matches_itself_in_any_point_order() -> None:
    assert len(BAND) == 20
    res = evaluate_image([BAND], [False], [BAND[::-1]])  # reversed orientation, same shape
    assert (res.matched, res.gt_care, res.det_care) == (1, 1, 1)
    rolled = BAND[7:] + BAND[:7]  # other start point
    assert evaluate_image([BAND], [False], [rolled]).matched == 1


def test_bounding_box_of_an_arc_is_not_the_arc() -> None:
    xs, ys = [p[0] for p in BAND], [p[1] for p in BAND]
    box = [[min(xs), min(ys)], [max(xs), min(ys)], [max(xs), max(ys)], [min(xs), max(ys)]]
    assert iou(BAND, box) < 0.5  # the polygon area is computed, not the quad's
    res = evaluate_image([BAND], [False], [box])
    assert (res.matched, res.det_care) == (0, 1)


THIRDS = [arc(200, 200, 80, 110, a, a + 140 / 3) for a in (20, 20 + 140 / 3, 20 + 280 / 3)]


def test_split_detection_gets_no_credit() -> None:
    assert max(iou(BAND, piece) for piece in THIRDS) < 0.4  # each piece covers a third of the word
    res = evaluate_image([BAND], [False], THIRDS)
    assert (res.matched, res.gt_care, res.det_care) == (0, 1, 3)
    assert res.precision == 0.0 and res.recall == 0.0


def test_merged_detection_matches_at_most_one_gt() -> None:
    small, big = arc(200, 200, 80, 110, 140, 160), arc(200, 200, 80, 110, 20, 135)
    assert iou(BAND, big) > 0.5 > iou(BAND, small)
    res = evaluate_image([small, big], [False, False], [BAND])  # one detection over two words
    assert res.matched == 1 and res.pairs == [(1, 0)] and res.recall == 0.5 and res.precision == 1.0
    res = evaluate_image(THIRDS, [False] * 3, [BAND])  # three equal words merged: IoU ~1/3 with each
    assert (res.matched, res.gt_care, res.det_care) == (0, 3, 1)


def test_dont_care_curved_region() -> None:
    inside = arc(200, 200, 85, 105, 40, 140)  # lies within the don't-care band
    res = evaluate_image([BAND], [True], [inside])
    assert (res.gt_care, res.det_care, res.det_dont_care) == (0, 0, [0])
    half_out = arc(200, 200, 100, 140, 40, 140)  # mostly outside the band
    covered = Polygon(BAND).intersection(Polygon(half_out)).area / Polygon(half_out).area
    assert covered < 0.5
    res = evaluate_image([BAND], [True], [half_out])
    assert res.det_care == 1 and res.precision == 0.0  # a false positive, not ignored


def test_self_intersecting_curved_gt_is_dropped() -> None:
    twisted = BAND[:10] + BAND[10:][::-1]  # inner arc walked the wrong way: a bow-tie
    assert not Polygon(twisted).is_valid
    res = evaluate_image([twisted, BAND], [False, False], [BAND])
    assert res.gt_invalid == [0] and (res.matched, res.gt_care) == (1, 1)


# --------------------------------------------------------------------------------------- readers

CTW_ABSOLUTE = """\
110,40,150,35,190,38,230,50,232,80,190,68,150,65,112,70,####ROAD
10,10,40,10,40,30,10,30,####
300,200,340,200,340,230,300,230,#######
"""
# Offsets form: xmin, ymin, xmax, ymax, then 14 (dx, dy): a 14-point band 100 wide, 20 high.
_TOP = [0, 16, 33, 50, 66, 83, 100]
CTW_OFFSETS_POINTS = [(dx, 0) for dx in _TOP] + [(dx, 20) for dx in reversed(_TOP)]
CTW_OFFSETS = ",".join(str(v) for v in [50, 60, 150, 80, *[c for p in CTW_OFFSETS_POINTS for c in p]]) + "\n"

TOTALTEXT = """\
x: [[115 503 494 115]], y: [[322 346 426 404]], ornt: [u'h'], transcriptions: [u'nauGHTY']
x: [[734 820 897 960 1010 1032 998 951 893 820 749 728]], y: [[ 92  68  66  84 130 159 176 140
   110  98 114 128]], ornt: [u'c'], transcriptions: [u"Don't"]
x: [[ 23  60  61  22]], y: [[188 187 203 205]], ornt: [u'#'], transcriptions: [u'#']
"""


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_ctw1500_absolute_form(tmp_path: Path) -> None:
    target = parse_ctw1500_gt(_write(tmp_path / "1001.txt", CTW_ABSOLUTE))
    assert [len(p) for p in target.polygons] == [8, 4, 4]
    assert target.polygons[0][:2] == [[110.0, 40.0], [150.0, 35.0]]
    assert target.texts == ["ROAD", "", "###"] and target.ignore == [False, False, True]


def test_ctw1500_offsets_form(tmp_path: Path) -> None:
    target = parse_ctw1500_gt(_write(tmp_path / "0001001.txt", CTW_OFFSETS))
    (poly,) = target.polygons
    assert len(poly) == 14 and poly[0] == [50.0, 60.0] and poly[7] == [150.0, 80.0]
    assert target.ignore == [False]


def test_totaltext_form_with_wrapped_record(tmp_path: Path) -> None:
    target = parse_totaltext_gt(_write(tmp_path / "poly_gt_img11.txt", TOTALTEXT))
    assert [len(p) for p in target.polygons] == [4, 12, 4]
    assert target.polygons[1][-1] == [728.0, 128.0]  # the y list continued on the next line
    assert target.texts == ["nauGHTY", "Don't", "#"] and target.ignore == [False, False, True]


@pytest.mark.parametrize(
    ("parser", "text", "message"),
    [
        (parse_ctw1500_gt, "1,2,3,4,5,6,7,####x\n1,2,3,####y\n", "line 1: expected an even number"),
        (parse_ctw1500_gt, "10,10,40,10,40,30\n", "line 1: expected 'x1,y1"),
        (parse_ctw1500_gt, "a,b,c,d,e,f,####x\n", "line 1: coordinates are not numbers"),
        (parse_totaltext_gt, "x: [[1 2 3]], y: [[1 2]], ornt: [u'h'], transcriptions: [u'a']", "x and y"),
        (parse_totaltext_gt, "\nhello\n", "line 2: expected a record"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path: Path, parser, text: str, message: str) -> None:
    path = _write(tmp_path / "bad.txt", text)
    with pytest.raises(OcrQuantError, match=message) as info:
        parser(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def _dataset(root: Path, images_dir: str, gt_dir: str, gt_name: str, text: str) -> Path:
    image = np.full((480, 1100, 3), 255, dtype=np.uint8)
    (root / images_dir).mkdir(parents=True)
    cv2.imwrite(str(root / images_dir / "img11.jpg"), image)
    _write(root / gt_dir / gt_name, text)
    return root


def test_curved_formats_are_detected_and_feed_the_metric(tmp_path: Path) -> None:
    tt = _dataset(tmp_path / "tt", "Images", "Groundtruth", "poly_gt_img11.txt", TOTALTEXT)
    ctw = _dataset(tmp_path / "ctw", "test_images", "test_labels", "img11.txt", CTW_ABSOLUTE)
    assert detect_format(tt, "det") == "totaltext" and detect_format(ctw, "det") == "ctw1500"
    for root, care in ((tt, 2), (ctw, 2)):
        dataset = open_dataset(root, "det")
        (sample,) = dataset.samples
        assert isinstance(sample.target, DetTarget) and sample.image_path.name == "img11.jpg"
        metric = DetMetric()
        metric.update({"polygons": sample.target.polygons}, sample.target)  # perfect detector
        result = metric.result()
        assert (result["gt_care"], result["matched"], result["hmean"]) == (care, care, 1.0)
    assert open_dataset(tt, "det-craft").format == "totaltext"  # a det variant reads det ground truth


def test_icdar_folder_is_not_claimed_by_curved_readers(tmp_path: Path) -> None:
    icdar = _dataset(tmp_path / "ic", "images", "gt", "gt_img11.txt", "1,1,20,1,20,10,1,10,word\n")
    assert detect_format(icdar, "det") == "icdar2015-det"
    assert not CTW1500.detect(icdar, None) and not TOTALTEXT_FORMAT.detect(icdar, None)


def test_missing_gt_file_is_reported(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "tt", "Images", "Groundtruth", "poly_gt_img11.txt", TOTALTEXT)
    cv2.imwrite(str(root / "Images" / "img12.jpg"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(OcrQuantError, match=r"img12\.jpg: no ground truth file \(poly_gt_img12\.txt"):
        open_dataset(root, "det", "totaltext")
