"""Task semantics against PaddleOCR's own code (RapidOCR's port, see oracle.py) and hand-derived cases."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ocrquant.errors import OcrQuantError
from ocrquant.tasks.base import get_task_class
from ocrquant.tasks.cls import ClsConfig, ClsTask
from ocrquant.tasks.det import DetConfig, DetTask, boxes_from_bitmap, det_resize, normalize_det
from ocrquant.tasks.rec import RecTask, ctc_greedy_decode, load_charset
from tests import oracle


def _prob_map(seed: int, h: int = 160, w: int = 288) -> np.ndarray:
    """A DB-like probability map: several filled, rotated text kernels on a noisy background."""
    rng = np.random.default_rng(seed)
    prob = (rng.random((h, w)) * 0.25).astype(np.float32)
    for _ in range(8):
        cx, cy = rng.uniform(20, w - 20), rng.uniform(15, h - 15)
        size = (rng.uniform(8, 70), rng.uniform(4, 18))
        box = cv2.boxPoints(((cx, cy), size, rng.uniform(-40, 40))).astype(np.int32)
        cv2.fillPoly(prob, [box], float(rng.uniform(0.45, 0.99)))
    return cv2.GaussianBlur(prob, (5, 5), 0)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("score_mode", ["fast", "slow"])
def test_db_boxes_match_paddleocr(seed: int, score_mode: str) -> None:
    prob = _prob_map(seed)
    bitmap = prob > 0.3
    ref = oracle.det_utils().DBPostProcess(
        thresh=0.3, box_thresh=0.6, unclip_ratio=1.5, score_mode=score_mode
    )
    ref_boxes, ref_scores = ref.boxes_from_bitmap(prob, bitmap, 720, 400)
    cfg = DetConfig(score_mode=score_mode)
    boxes, scores = boxes_from_bitmap(prob, bitmap, 720, 400, cfg)
    assert len(ref_boxes) == len(boxes) > 0
    np.testing.assert_array_equal(np.array(boxes), np.array(ref_boxes))
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-6)


@pytest.mark.parametrize("hw", [(720, 1280), (1280, 720), (300, 500), (1000, 1000), (20, 900)])
def test_det_resize_matches_paddleocr(hw: tuple[int, int]) -> None:
    image = np.random.default_rng(0).integers(0, 255, (*hw, 3), dtype=np.uint8)
    ref = oracle.det_utils().DetResizeForTest(limit_side_len=960, limit_type="max")
    data = ref({"image": image.copy()})
    resized, ratio_h, ratio_w = det_resize(image, DetConfig())
    np.testing.assert_array_equal(resized, data["image"])
    assert (ratio_h, ratio_w) == pytest.approx(tuple(data["shape"][2:]))


def test_det_resize_of_icdar_frame() -> None:
    # 1280x720 with max side 960: ratio 0.75 -> 960 x 540 -> multiples of 32 -> 960 x 544
    resized, _, _ = det_resize(np.zeros((720, 1280, 3), np.uint8), DetConfig())
    assert resized.shape[:2] == (544, 960)
    fixed, _, _ = det_resize(np.zeros((720, 1280, 3), np.uint8), DetConfig(input_shape=(512, 896)))
    assert fixed.shape[:2] == (512, 896)


def test_det_normalisation_matches_paddleocr() -> None:
    image = np.random.default_rng(1).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    utils = oracle.det_utils()
    norm = utils.NormalizeImage(
        std=[0.229, 0.224, 0.225], mean=[0.485, 0.456, 0.406], scale="1./255.", order="hwc"
    )
    ref = utils.ToCHWImage()(norm({"image": image.copy()}))["image"]
    np.testing.assert_allclose(normalize_det(image), ref, rtol=1e-6, atol=1e-6)


def test_det_postprocess_filters_and_orders() -> None:
    prob = _prob_map(3)
    task = DetTask(DetConfig())
    batch = task.preprocess([np.zeros((400, 720, 3), np.uint8)])
    preds = task.postprocess([prob[None, None]], batch)
    for poly in preds[0]["polygons"]:
        p = np.array(poly)
        assert p.shape == (4, 2)
        assert (p[:, 0] <= 719).all() and (p[:, 1] <= 399).all() and (p >= 0).all()
        # clockwise from top-left: the smallest x+y first
        assert p.sum(axis=1).argmin() == 0
    assert len(preds[0]["polygons"]) == len(preds[0]["scores"])


def test_det_poly_mode_gives_polygons() -> None:
    prob = np.zeros((128, 256), np.float32)
    t = np.linspace(0, np.pi, 40)
    arc = np.stack([128 + 90 * np.cos(t), 110 - 80 * np.sin(t)], 1).astype(np.int32)
    cv2.polylines(prob, [arc], False, 0.95, thickness=9)
    out = DetTask(DetConfig(box_type="poly")).postprocess(
        [prob[None, None]], DetTask().preprocess([np.zeros((128, 256, 3), np.uint8)])
    )[0]
    assert len(out["polygons"]) == 1 and len(out["polygons"][0]) > 4


@pytest.mark.parametrize("seed", range(4))
def test_ctc_decode_matches_paddleocr(seed: int) -> None:
    rng = np.random.default_rng(seed)
    chars = list("abcdefghij0123456789")
    charset = ["blank", *chars, " "]
    logits = rng.normal(size=(3, 40, len(charset))).astype(np.float32)
    logits[:, :, 0] += 1.5  # blanks are frequent, as in real CTC output
    logits[:, 10:13, 3] += 9  # a repeated character that must collapse
    probs = np.exp(logits) / np.exp(logits).sum(2, keepdims=True)
    ref = oracle.rec_utils().CTCLabelDecode(list(chars))(probs)
    ours = ctc_greedy_decode(probs, charset)
    assert [o["text"] for o in ours] == [r[0] for r in ref]
    for o, r in zip(ours, ref, strict=True):
        # RapidOCR averages with an extra 1e-50 element (n + 1 terms); PaddleOCR averages the n kept steps
        n = len(o["text"])  # one character per kept step
        expected = float(r[1]) * (n + 1) / n if n else 0.0
        assert o["score"] == pytest.approx(expected, abs=1e-5)


def test_ctc_decode_hand_case() -> None:
    # steps: a a blank a b b blank -> "aab"; blank-only -> ""
    charset = ["blank", "a", "b", " "]
    seq = [1, 1, 0, 1, 2, 2, 0]
    probs = np.full((2, len(seq), 4), 0.01, np.float32)
    for t, k in enumerate(seq):
        probs[0, t, k] = 0.97
    probs[1, :, 0] = 0.97
    out = ctc_greedy_decode(probs, charset)
    assert out[0]["text"] == "aab" and out[1]["text"] == "" and out[1]["score"] == 0.0


def test_rec_width_rule() -> None:
    task = RecTask(model_metadata={"character": "a\nb"})
    narrow = np.zeros((32, 40, 3), np.uint8)  # w/h 1.25 -> width stays 320
    assert task.preprocess([narrow]).inputs.shape == (1, 3, 48, 320)
    wide = np.zeros((20, 300, 3), np.uint8)  # w/h 15 -> int(48 * 15) = 720
    batch = task.preprocess([narrow, wide]).inputs
    assert batch.shape == (2, 3, 48, 720)
    # the narrow crop is ceil(48 * 1.25) = 60 px wide, then zero padding
    assert np.all(batch[0, :, :, 60:] == 0) and not np.all(batch[0, :, :, :60] == 0)


def test_charset_from_metadata_has_blank_and_space() -> None:
    cs = load_charset({"character": "x\ny\nz"}, None)
    assert cs == ["blank", "x", "y", "z", " "]


def test_cls_preprocess_and_labels() -> None:
    task = ClsTask(ClsConfig())
    image = np.full((30, 60, 3), 255, np.uint8)  # ratio 2 -> 96 px of 192, the rest zero
    x = task.preprocess([image]).inputs
    assert x.shape == (1, 3, 48, 192)
    assert np.allclose(x[0, :, :, :96], 1.0) and np.all(x[0, :, :, 96:] == 0)
    preds = task.postprocess(
        [np.array([[0.2, 0.8], [0.9, 0.1]], np.float32)], task.preprocess([image, image])
    )
    assert [p["label"] for p in preds] == ["180", "0"] and preds[0]["score"] == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("task", "shape", "fits"),
    [
        ("det", [None, 1, "h", "w"], True),
        ("det", ["n", 1, 640, 640], True),
        ("det", [None, None, 6625], False),  # a rec model
        ("det", [None, 2], False),  # a cls model
        ("det", [None, 3, None, None], False),  # three maps, not DB's one
        ("rec", [None, None, 6625], True),
        ("rec", [None, 1, None, None], False),
        ("cls", [None, 2], True),
        ("cls", [None, None, 6625], False),
        ("det-craft", ["b", "h", "w", 2], True),
        ("det-craft", [None, None, 6625], False),
        ("rec", None, True),  # nothing declared: nothing to refuse
    ],
)
def test_declared_output_shape_check(task: str, shape: list | None, fits: bool) -> None:
    """Each task refuses a model whose declared output cannot be its own, naming the file."""
    t = get_task_class(task)()
    if fits:
        t.check_output_shape(shape, "m.onnx")
    else:
        with pytest.raises(OcrQuantError, match=f"m.onnx.*is this a {task} model"):
            t.check_output_shape(shape, "m.onnx")
