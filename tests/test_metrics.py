"""Metric semantics, pinned with hand-computed values (the arithmetic is in the comments).

Axis-aligned boxes with integer corners keep every area exact in floating point, so IoU values such as
exactly 0.5 can be tested as boundaries without tolerance worries.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ocrquant.data.types import DetTarget
from ocrquant.metrics import ClsMetric, DetMetric, RecMetric, evaluate_image


def box(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    """Clockwise axis-aligned rectangle as a 4-point polygon."""
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def arc_band(r_in: float, r_out: float, start_step: int, steps: int, step_deg: float = 10.0) -> list:
    """Curved-text polygon: an annulus sector sampled at angles (start_step + i) * step_deg, i = 0..steps.

    Outer arc forwards, inner arc backwards, so ``steps + 1`` points per side. Its area is exactly
    steps * 0.5 * sin(step) * (r_out**2 - r_in**2) (each step is an outer triangle minus an inner one).
    """
    ang = np.deg2rad((start_step + np.arange(steps + 1)) * step_deg)
    outer = np.stack([r_out * np.cos(ang), r_out * np.sin(ang)], axis=1)
    inner = np.stack([r_in * np.cos(ang), r_in * np.sin(ang)], axis=1)[::-1]
    return np.concatenate([outer, inner]).tolist()


G = box(0, 0, 10, 10)  # area 100, used as the reference GT throughout


# ---------------------------------------------------------------------------------------------- det


def test_perfect_match() -> None:
    gts = [G, box(20, 0, 30, 10)]
    res = evaluate_image(gts, [False, False], [box(20, 0, 30, 10), G])
    # GT0 meets det0 first (IoU 0: disjoint), then det1 (IoU 1) -> pair (0, 1); GT1 takes det0.
    assert (res.matched, res.gt_care, res.det_care) == (2, 2, 2)
    assert res.pairs == [(0, 1), (1, 0)]
    assert (res.precision, res.recall, res.hmean) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    ("y1", "matched"),
    [
        (4.9, 0),  # det [0,10]x[0,4.9] inside G: IoU = 49 / 100 = 0.49
        (5.0, 0),  # IoU = 50 / 100 = 0.5 exactly: the rule is IoU > 0.5, so no match
        (5.1, 1),  # IoU = 51 / 100 = 0.51
    ],
)
def test_iou_threshold_is_strict(y1: float, matched: int) -> None:
    res = evaluate_image([G], [False], [box(0, 0, 10, y1)])
    assert res.matched == matched
    assert (res.gt_care, res.det_care) == (1, 1)


def test_iou_of_partly_overlapping_boxes() -> None:
    # det [3,13]x[0,10]: intersection 7*10 = 70, union 100 + 100 - 70 = 130, IoU = 0.538 > 0.5 -> match.
    assert evaluate_image([G], [False], [box(3, 0, 13, 10)]).matched == 1
    # det [4,14]x[0,10]: intersection 60, union 140, IoU = 0.4286 -> no match.
    assert evaluate_image([G], [False], [box(4, 0, 14, 10)]).matched == 0


def test_detection_over_dont_care_region_is_removed() -> None:
    care, dont_care = G, box(20, 0, 30, 10)
    dets = [
        box(0, 0, 10, 10),  # matches the care GT
        box(20, 0, 30, 10),  # inside the don't-care GT: 100 / 100 = 1.0 > 0.5 -> don't-care det
        box(24, 0, 34, 10),  # overlap [24,30]: 60 / 100 = 0.6 > 0.5 -> don't-care det
        box(25, 0, 35, 10),  # overlap [25,30]: 50 / 100 = 0.5, not > 0.5 -> a care det, and a FP
    ]
    res = evaluate_image([care, dont_care], [False, True], dets)
    assert res.gt_dont_care == [1]
    assert res.det_dont_care == [1, 2]
    # care GT = 2 - 1 = 1, care det = 4 - 2 = 2, matched 1 -> P = 1/2, R = 1/1.
    assert (res.matched, res.gt_care, res.det_care) == (1, 1, 2)
    assert res.precision == 0.5 and res.recall == 1.0


def test_one_gt_two_overlapping_detections_is_one_to_one() -> None:
    # det0 [0,10]x[0,9]: IoU 90/100 = 0.9; det1 [0,10]x[1,10]: IoU 0.9 too. GT takes det0 (first in
    # order); det1 stays unmatched -> TP 1, FP 1: P = 1/2, R = 1/1, H = 2*0.5*1/1.5 = 2/3.
    res = evaluate_image([G], [False], [box(0, 0, 10, 9), box(0, 1, 10, 10)])
    assert res.pairs == [(0, 0)]
    assert (res.matched, res.gt_care, res.det_care) == (1, 1, 2)
    assert res.hmean == pytest.approx(2 / 3)


def test_greedy_first_above_threshold_not_best_or_optimal() -> None:
    g0, g1 = G, box(4, 0, 14, 10)
    d0 = box(2, 0, 12, 10)  # vs g0: inter 8*10 = 80, union 120 -> 0.667; vs g1: inter 80, union 120 -> 0.667
    d1 = box(0, 0, 10, 9)  # vs g0: 90/100 = 0.9; vs g1: inter 6*9 = 54, union 100 + 90 - 54 = 136 -> 0.397
    res = evaluate_image([g0, g1], [False, False], [d0, d1])
    # PaddleOCR's loop: g0 takes d0 (first det over 0.5, although d1 is better); g1 then only has d1,
    # at 0.397 -> unmatched. An optimal assignment would have found 2 matches; the protocol finds 1.
    assert res.pairs == [(0, 0)]
    assert (res.matched, res.gt_care, res.det_care) == (1, 2, 2)


def test_one_detection_covering_two_gt_gets_no_credit() -> None:
    # det [0,22]x[0,10] (area 220) over GT [0,10] and [12,22]: each IoU = 100 / 220 = 0.4545 -> no match.
    # ICDAR2015's IoU protocol has no split/merge credit: TP 0, FP 1, two misses.
    res = evaluate_image([G, box(12, 0, 22, 10)], [False, False], [box(0, 0, 22, 10)])
    assert (res.matched, res.gt_care, res.det_care) == (0, 2, 1)
    assert (res.precision, res.recall, res.hmean) == (0.0, 0.0, 0.0)


def test_empty_predictions() -> None:
    res = evaluate_image([G, box(20, 0, 30, 10)], [False, False], [])
    # care GT 2, care det 0: per-image precision is 0 (PaddleOCR: numDetCare == 0 -> 0), recall 0/2.
    assert (res.matched, res.gt_care, res.det_care) == (0, 2, 0)
    assert (res.precision, res.recall, res.hmean) == (0.0, 0.0, 0.0)
    metric = DetMetric()
    metric.update({"polygons": [], "scores": []}, DetTarget([G], ["a"], [False]))
    # Set level: precision 0/0 -> 0 (combine_results), recall 0/1 = 0.
    assert metric.result() == {
        "precision": 0.0,
        "recall": 0.0,
        "hmean": 0.0,
        "matched": 0,
        "gt_care": 1,
        "det_care": 0,
        "images": 1,
    }


def test_empty_gt() -> None:
    res = evaluate_image([], [], [G])
    # No care GT: PaddleOCR's per-image recall is 1, precision 0 because something was detected.
    assert (res.matched, res.gt_care, res.det_care) == (0, 0, 1)
    assert (res.precision, res.recall) == (0.0, 1.0)
    nothing = evaluate_image([], [], [])
    assert (nothing.precision, nothing.recall, nothing.hmean) == (1.0, 1.0, 1.0)
    metric = DetMetric()
    metric.update({"polygons": [G], "scores": [0.9]}, DetTarget())
    # Set level: recall 0/0 -> 0, precision 0/1 = 0.
    r = metric.result()
    assert (r["precision"], r["recall"], r["hmean"], r["det_care"], r["gt_care"]) == (0.0, 0.0, 0.0, 1, 0)


def test_image_with_only_dont_care_gt_adds_nothing() -> None:
    metric = DetMetric()
    # Image 1: one '###' region (flag set by the reader) and a detection on it -> both removed.
    per = metric.update({"polygons": [G], "scores": [0.8]}, DetTarget([G], ["###"], [True]))
    assert (per["gt_care"], per["det_care"], per["matched"]) == (0, 0, 0)
    assert per["det_dont_care"] == 1 and per["gt_dont_care"] == 1
    # PaddleOCR per-image convention: nothing to find and nothing wrong -> P = R = 1.
    assert (per["precision"], per["recall"]) == (1.0, 1.0)
    # Image 2: one care GT, found.
    metric.update({"polygons": [G], "scores": [0.9]}, DetTarget([G], ["word"], [False]))
    # Totals: matched 1, care GT 0 + 1, care det 0 + 1 -> P = R = H = 1 (image 1 does not dilute).
    r = metric.result()
    assert (r["precision"], r["recall"], r["hmean"], r["images"]) == (1.0, 1.0, 1.0, 2)


def test_hash_transcription_is_dont_care_even_without_flag() -> None:
    # ignore list left empty by a reader: '###' still marks the region as don't-care (DetLabelEncode).
    per = DetMetric().update({"polygons": [G]}, DetTarget([G], ["###"], []))
    assert (per["gt_care"], per["det_care"]) == (0, 0)


def test_curved_polygons_match_and_miss() -> None:
    # GT: band r in [8,10] over 0..120 degrees in 12 steps of 10 -> 13 points per side, 26 in all.
    gt = arc_band(8, 10, 0, 12)
    assert len(gt) == 26
    # Same angles, r in [9,10]: inner chords at r=9 lie inside the GT (chord midpoints at 9*cos 5deg > 8),
    # outer chords identical, so det is a subset and IoU = area ratio = (100-81)/(100-64) = 19/36 = 0.528.
    assert evaluate_image([gt], [False], [arc_band(9, 10, 0, 12)]).matched == 1
    # r in [9.5,10]: IoU = (100-90.25)/36 = 9.75/36 = 0.271 -> no match.
    assert evaluate_image([gt], [False], [arc_band(9.5, 10, 0, 12)]).matched == 0
    # Same radii, shifted along the arc by 3 steps (30..150 deg): shared 9 steps, union 15 steps
    # -> IoU = 9/15 = 0.6 -> match. Shifted 5 steps: 7/17 = 0.412 -> no match.
    assert evaluate_image([gt], [False], [arc_band(8, 10, 3, 12)]).matched == 1
    assert evaluate_image([gt], [False], [arc_band(8, 10, 5, 12)]).matched == 0


def test_totals_are_summed_not_averaged() -> None:
    metric = DetMetric()
    # Image A: 1 GT, found -> per-image P = R = 1.
    a = metric.update({"polygons": [G], "scores": [0.9]}, DetTarget([G], ["a"], [False]))
    # Image B: 3 GT, one detection that misses -> per-image P = 0/1, R = 0/3.
    gts_b = [box(0, 0, 10, 10), box(20, 0, 30, 10), box(40, 0, 50, 10)]
    b = metric.update(
        {"polygons": [box(60, 0, 70, 10)], "scores": [0.9]}, DetTarget(gts_b, ["b"] * 3, [False] * 3)
    )
    assert (a["recall"], b["recall"]) == (1.0, 0.0)
    r = metric.result()
    # Summed: matched 1, care GT 1 + 3 = 4, care det 1 + 1 = 2 -> P = 1/2, R = 1/4, H = 2*(1/8)/(3/4) = 1/3.
    # (Averaging per-image figures would give R = (1 + 0)/2 = 0.5 and H = 0.5 instead.)
    assert (r["matched"], r["gt_care"], r["det_care"]) == (1, 4, 2)
    assert r["precision"] == 0.5 and r["recall"] == 0.25
    assert r["hmean"] == pytest.approx(1 / 3)
    json.dumps(a), json.dumps(r)  # per-image and set figures must be JSON-serialisable


def test_invalid_bow_tie_polygons_are_skipped() -> None:
    bow_tie = [[0, 0], [10, 10], [10, 0], [0, 10]]  # self-intersecting: shapely is_valid False
    # GT bow-tie is dropped: care GT is 1 (only the valid box), so recall 1/1 rather than 1/2.
    res = evaluate_image([G, bow_tie], [False, False], [G])
    assert (res.matched, res.gt_care, res.det_care) == (1, 1, 1)
    assert res.gt_invalid == [1]
    # Detection bow-tie is dropped: not a false positive, so precision stays 1/1.
    res = evaluate_image([G], [False], [G, bow_tie])
    assert (res.matched, res.gt_care, res.det_care) == (1, 1, 1)
    assert res.det_invalid == [1]
    # A bow-tie don't-care GT is dropped too, so it cannot turn a detection into a don't-care one:
    # the detection over it is an ordinary false positive (care det 1, matched 0).
    res = evaluate_image([bow_tie], [True], [G])
    assert (res.matched, res.gt_care, res.det_care) == (0, 0, 1)


def test_degenerate_polygons_are_skipped_instead_of_crashing() -> None:
    # Fewer than 3 points, zero area (collinear) and NaN: PaddleOCR raises or skips; all skipped here.
    dets = [[[0, 0], [5, 5]], [[0, 0], [5, 5], [10, 10]], [[0, 0], [float("nan"), 0], [5, 5]], G]
    res = evaluate_image([G], [False], dets)
    assert res.det_invalid == [0, 1, 2]
    assert (res.matched, res.det_care, res.pairs) == (1, 1, [(0, 3)])


def test_numpy_polygons_accepted() -> None:
    res = evaluate_image([np.array(G, dtype=np.float32)], [False], [np.array(G)])
    assert res.matched == 1


# ---------------------------------------------------------------------------------------------- rec


def test_rec_spaces_removed_case_kept() -> None:
    m = RecMetric()
    assert m.update({"text": "Hello World", "score": 0.9}, "HelloWorld")["correct"]  # spaces dropped
    assert not m.update({"text": "hello", "score": 0.9}, "Hello")["correct"]  # case counts
    assert not m.update({"text": "a.b", "score": 0.9}, "ab")["correct"]  # symbols count
    r = m.result()
    assert r["acc"] == pytest.approx(1 / 3) and r["count"] == 3
    # Case-insensitive alnum: "helloworld" == "helloworld", "hello" == "hello", "ab" == "ab" -> 3/3.
    assert r["acc_ci_alnum"] == 1.0


def test_rec_alnum_normalisation_and_empty_labels() -> None:
    m = RecMetric()
    # "A-1 b" -> spaces removed "A-1b" -> alnum "A1b" -> lower "a1b"; label "a1b!" -> "a1b": correct.
    assert m.update({"text": "A-1 b", "score": 1.0}, "a1b!")["correct_ci_alnum"] is True
    # Label "中文" normalises to "": excluded from acc_ci_alnum (None), still counted by acc.
    assert m.update({"text": "", "score": 1.0}, "中文")["correct_ci_alnum"] is None
    r = m.result()
    assert r["acc_ci_alnum"] == 1.0 and r["alnum_skipped"] == 1
    assert r["acc"] == 0.0 and r["count"] == 2  # "A-1b" != "a1b!", "" != "中文"


def test_rec_norm_edit_similarity() -> None:
    m = RecMetric()
    # "abcd" vs "abed": 1 substitution / max len 4 -> distance 0.25, similarity 0.75.
    assert m.update({"text": "abcd", "score": 1.0}, "abed")["norm_edit_sim"] == pytest.approx(0.75)
    # "ab" vs "abcd": 2 insertions / 4 -> 0.5.
    m.update({"text": "ab", "score": 1.0}, "abcd")
    # "a b c" vs "abc": spaces removed first -> identical -> distance 0.
    m.update({"text": "a b c", "score": 1.0}, "abc")
    # Mean distance (0.25 + 0.5 + 0) / 3 = 0.25 -> norm_edit_sim 0.75; acc 1/3.
    r = m.result()
    assert r["norm_edit_sim"] == pytest.approx(0.75)
    assert r["acc"] == pytest.approx(1 / 3)


def test_rec_empty_set() -> None:
    assert RecMetric().result() == {
        "acc": 0.0,
        "acc_ci_alnum": 0.0,
        "norm_edit_sim": 0.0,
        "count": 0,
        "alnum_skipped": 0,
    }


# ---------------------------------------------------------------------------------------------- cls


def test_cls_counts_and_per_class_accuracy() -> None:
    m = ClsMetric()
    preds = [(0, 0), (0, 0), (1, 0), (1, 1), (0, 1)]  # (predicted, true)
    for pred, true in preds:
        m.update({"index": pred, "label": ["0", "180"][pred], "score": 0.9}, true)
    r = m.result()
    # Correct: #0, #1, #3 -> 3/5 = 0.6. Class 0: 2 of 3 correct; class 1: 1 of 2.
    assert r["acc"] == pytest.approx(0.6) and r["count"] == 5
    assert r["acc_class_0"] == pytest.approx(2 / 3) and r["count_class_0"] == 3
    assert r["acc_class_1"] == 0.5 and r["count_class_1"] == 2
    assert ClsMetric().result() == {"acc": 0.0, "count": 0}


# ------------------------------------------------------------------------- fidelity (pred as target)


def test_prediction_as_target_scores_itself_perfectly_and_counts_changes() -> None:
    """A model scored against its own predictions is perfect; against another model's, each changed
    box / word / class counts, whether the labels would call the change right or wrong."""
    det = DetMetric()
    pred = {"polygons": [box(0, 0, 10, 10), box(20, 0, 30, 10)]}
    moved = {"polygons": [box(0, 0, 10, 10), box(20, 0, 30, 20)]}  # IoU of the second = 0.5: no match
    assert det.update(pred, det.target_from_prediction(pred))["hmean"] == 1.0
    assert det.update(moved, det.target_from_prediction(pred))["matched"] == 1
    assert det.result()["hmean"] == pytest.approx(3 / 4)  # 3 matched of 4 care boxes each side
    rec = RecMetric()
    rec.update({"text": "HELLO"}, rec.target_from_prediction({"text": "HELLO"}))
    rec.update({"text": "HELL0"}, rec.target_from_prediction({"text": "HELLO"}))
    assert rec.result()["acc"] == 0.5
    cls = ClsMetric()
    cls.update({"index": 1}, cls.target_from_prediction({"index": 1}))
    assert cls.result()["acc"] == 1.0


def _result(figures: list[dict]) -> list[dict]:
    """Per-sample records as ``EvalResult.samples`` holds them (the part the interval reads)."""
    return [{"key": f"s{i}", "figures": f} for i, f in enumerate(figures)]


def test_delta_interval_matches_the_paired_standard_error():
    """1000 crops, INT8 breaks 50 the float model read and fixes 30 it missed: delta -2 pt, and the
    paired bootstrap's spread is the textbook sqrt(var(d) / n) of the per-crop differences."""
    from ocrquant.evaluation.significance import paired_delta_interval

    n, broken, fixed = 1000, 50, 30
    fl = [True] * 700 + [False] * 300
    q = list(fl)
    for i in range(broken):
        q[i] = False
    for i in range(700, 700 + fixed):
        q[i] = True
    out = paired_delta_interval(
        RecMetric(), _result([{"correct": c} for c in fl]), _result([{"correct": c} for c in q])
    )
    d = np.array(q, float) - np.array(fl, float)
    assert d.mean() == pytest.approx(-0.02)
    assert out["se"] == pytest.approx(d.std() / np.sqrt(n), rel=0.1)
    assert out["low"] < -0.02 < out["high"] < 0  # this change is outside noise
    same = paired_delta_interval(
        RecMetric(), _result([{"correct": c} for c in fl]), _result([{"correct": c} for c in fl])
    )
    assert same["low"] == same["high"] == 0.0


def test_det_stats_give_the_metric_hmean():
    """DetMetric's summable per-image counts rebuild exactly the hmean its result() gives."""
    metric = DetMetric()
    box = [[0, 0], [10, 0], [10, 10], [0, 10]]
    far = [[50, 50], [60, 50], [60, 60], [50, 60]]
    rows = [
        metric.sample_stats(metric.update({"polygons": p}, DetTarget(g, [""] * len(g), [False] * len(g))))
        for p, g in (([box], [box]), ([box, far], [box]), ([], [box, far]))
    ]
    assert DetMetric.primary_from_stats(np.array(rows).sum(0)) == pytest.approx(metric.result()["hmean"])
    assert DetMetric.primary_from_stats(np.zeros(3)) == 0.0


def test_paired_mean_interval_of_a_per_sample_figure():
    """rec's 1-NED interval: the bootstrap of mean(int8) - mean(float) over samples paired by key; a
    constant shift gives a zero-width interval at the shift, and samples without the figure give None."""
    from ocrquant.evaluation.significance import paired_mean_interval

    rng = np.random.default_rng(0)
    values = rng.uniform(0.5, 1.0, 200)
    fp = [{"key": f"k{i}", "figures": {"norm_edit_sim": float(v)}} for i, v in enumerate(values)]
    q = [{"key": f"k{i}", "figures": {"norm_edit_sim": float(v) - 0.01}} for i, v in enumerate(values)]
    ci = paired_mean_interval(fp, q, "norm_edit_sim")
    assert ci["low"] == pytest.approx(-0.01) and ci["high"] == pytest.approx(-0.01) and ci["samples"] == 200
    noisy = [{"key": s["key"], "figures": {"norm_edit_sim": s["figures"]["norm_edit_sim"] + d}}
             for s, d in zip(fp, rng.normal(0, 0.05, 200), strict=True)]  # fmt: skip
    ci = paired_mean_interval(fp, noisy, "norm_edit_sim")
    assert ci["low"] < 0 < ci["high"] and ci["resamples"] == 2000
    assert paired_mean_interval(fp, q, "no_such_figure") is None
