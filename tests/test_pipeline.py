"""End-to-end OCR: the ICDAR2015 e2e metric on hand-made cases, crop geometry, reading order, and the
real zoo models chained on blank and sample images."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from ocrquant.data import DetTarget, load_image, open_dataset, sample_root
from ocrquant.errors import OcrQuantError
from ocrquant.metrics.e2e import E2EMetric, Lexicon, load_lexicon, transcription_match
from ocrquant.pipeline import (
    OcrPipeline,
    PipelineConfig,
    build_pipeline,
    get_rotate_crop_image,
    resolve_stage_model,
    sorted_boxes,
)
from ocrquant.runtime import RuntimeOptions


def rect(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


# ------------------------------------------------------------------------------------------ e2e metric


def _score(gt: list[tuple[list, str]], det: list[tuple[list, str]], lexicon: Lexicon | None = None, key=None):
    target = DetTarget([p for p, _ in gt], [t for _, t in gt], [t == "###" for _, t in gt])
    metric = E2EMetric(lexicon)
    pred = {"polygons": [p for p, _ in det], "texts": [t for _, t in det], "key": key}
    figures = metric.update(pred, target)
    return figures, metric.result()


def test_right_box_right_word_counts() -> None:
    _, res = _score([(rect(0, 0, 100, 30), "EXIT")], [(rect(2, 1, 101, 31), "EXIT")])
    assert (res["correct"], res["gt_care"], res["det_care"], res["hmean"]) == (1, 1, 1, 1.0)


def test_right_box_wrong_word_is_a_false_positive_and_a_miss() -> None:
    _, res = _score([(rect(0, 0, 100, 30), "EXIT")], [(rect(0, 0, 100, 30), "EXT")])
    assert (res["correct"], res["precision"], res["recall"]) == (0, 0.0, 0.0)
    assert res["det_hmean"] == 1.0  # detection alone was right


def test_right_word_wrong_box_does_not_count() -> None:
    # IoU of the detection with the GT is 50/150 = 0.33 < 0.5
    _, res = _score([(rect(0, 0, 100, 30), "EXIT")], [(rect(50, 0, 150, 30), "EXIT")])
    assert (res["correct"], res["det_care"], res["gt_care"]) == (0, 1, 1)


def test_wrong_reading_uses_up_the_gt_word() -> None:
    # Both detections overlap the GT; the first (in detection order) takes it with a wrong reading, so
    # the right reading that comes second is unmatched: one-to-one as in the competition script.
    gt = [(rect(0, 0, 100, 30), "EXIT")]
    _, res = _score(gt, [(rect(1, 0, 100, 30), "EX1T"), (rect(0, 1, 100, 30), "EXIT")])
    assert (res["correct"], res["det_care"]) == (0, 2)


def test_dont_care_region_removes_detections_inside_it() -> None:
    gt = [(rect(0, 0, 100, 30), "EXIT"), (rect(200, 0, 300, 30), "###")]
    det = [(rect(0, 0, 100, 30), "exit"), (rect(205, 2, 290, 28), "garbage")]
    _, res = _score(gt, det)
    assert (res["correct"], res["gt_care"], res["det_care"], res["precision"]) == (1, 1, 1, 1.0)


@pytest.mark.parametrize(
    ("gt", "det", "ok"),
    [
        ("EXIT", "exit", True),  # case-insensitive
        ("Exit", "eXIT", True),
        ("EXIT.", "EXIT", True),  # one special character may go from the GT's end ...
        ("(EXIT", "exit", True),  # ... or start
        ('"EXIT"', "EXIT", True),  # ... or both
        ("EXIT", "EXIT.", False),  # never from the detection
        ("EXIT..", "EXIT", False),  # only one per side
        ("ST.MARC", "STMARC", False),  # inner punctuation counts
        ("H&M", "H&M", True),
        ("50%", "50", False),  # % is not a special character
        ("CAFÉ", "café", True),
    ],
)
def test_transcription_match(gt: str, det: str, ok: bool) -> None:
    assert transcription_match(gt, det) is ok


def test_lexicon_snaps_to_the_nearest_word() -> None:
    lex = Lexicon("weak", words=["EXIT", "SALE", "STORE"])
    assert lex.snap("EXLT") == "EXIT"
    assert lex.snap("EX1T") == "EXIT"
    assert lex.snap("Stor") == "STORE"
    assert lex.snap("exit.") == "EXIT"
    assert lex.snap("SALE 50%") == "SALE"  # a detector's merged words snap to the nearer one
    assert lex.snap("20029") == "20029"  # no letter: no lexicon word can match it, kept
    assert lex.snap("$8,888") == "$8,888"
    assert Lexicon("weak", words=["EXIT", "SALE"], snap_mode="all").snap("20029") in {"EXIT", "SALE"}
    assert Lexicon("weak", words=["EXIT"], max_distance=1).snap("ABCDEFG") == "ABCDEFG"


def test_lexicon_snapping_turns_a_near_miss_into_a_hit(tmp_path: Path) -> None:
    (tmp_path / "strong_per_image").mkdir()
    (tmp_path / "strong_per_image" / "voc_img_7.txt").write_text("\ufeffEXIT\r\nSALE\r\n", encoding="utf-8")
    (tmp_path / "generic_vocabulary.txt").write_text("#header line\nEXIT\nEXTRA\n", encoding="utf-8")
    gt = [(rect(0, 0, 100, 30), "Exit")]
    det = [(rect(0, 0, 100, 30), "Exlt")]
    assert _score(gt, det)[1]["correct"] == 0
    strong = load_lexicon("strong", tmp_path)
    assert _score(gt, det, strong, key="img_7.jpg")[1]["correct"] == 1
    generic = load_lexicon("generic", tmp_path)
    assert generic.words == ["EXIT", "EXTRA"]  # comment header skipped
    assert _score(gt, det, generic)[1]["correct"] == 1
    with pytest.raises(OcrQuantError, match="per image"):
        _score(gt, det, strong, key=None)
    with pytest.raises(OcrQuantError, match="weak lexicon not found"):
        load_lexicon("weak", tmp_path)


def test_real_icdar_lexicons_load(icdar: Path) -> None:
    vocab = icdar / "vocabularies"
    generic = load_lexicon("generic", vocab)
    assert len(generic.words) > 80000 and all(not w.startswith("#") for w in generic.words[:5])
    assert generic.snap("Regulatlng") == "REGULATING"
    assert load_lexicon("strong", vocab).snap("JOlNT", "img_2.jpg") == "JOINT"


# ------------------------------------------------------------------------------------------ geometry


def _word_patch(text: str = "OCRQUANT", size: tuple[int, int] = (60, 260)) -> np.ndarray:
    patch = np.full((*size, 3), 255, np.uint8)
    cv2.putText(patch, text, (8, 45), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (0, 0, 0), 4, cv2.LINE_AA)
    return patch


@pytest.mark.parametrize("angle", [-35.0, 20.0])
def test_crop_undoes_a_rotation(angle: float) -> None:
    patch = _word_patch()
    h, w = patch.shape[:2]
    canvas = np.full((420, 420, 3), 255, np.uint8)
    x0, y0 = 80, 180
    canvas[y0 : y0 + h, x0 : x0 + w] = patch
    m = cv2.getRotationMatrix2D((210, 210), angle, 1.0)
    rotated = cv2.warpAffine(canvas, m, (420, 420), borderValue=(255, 255, 255))
    corners = np.float32([[x0, y0], [x0 + w, y0], [x0 + w, y0 + h], [x0, y0 + h]])
    box = cv2.transform(corners[None], m)[0]
    crop = get_rotate_crop_image(rotated, box)
    assert abs(crop.shape[0] - h) <= 2 and abs(crop.shape[1] - w) <= 2
    a = cv2.cvtColor(cv2.resize(crop, (w, h)), cv2.COLOR_BGR2GRAY).astype(np.float64).ravel()
    b = cv2.cvtColor(patch, cv2.COLOR_BGR2GRAY).astype(np.float64).ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.9
    # the same word upside down would not correlate: the crop is upright, not merely aligned
    flipped = cv2.cvtColor(cv2.rotate(cv2.resize(crop, (w, h)), cv2.ROTATE_180), cv2.COLOR_BGR2GRAY)
    assert np.corrcoef(flipped.astype(np.float64).ravel(), b)[0, 1] < 0.5


def test_tall_crop_is_turned_90_degrees() -> None:
    image = np.zeros((200, 200, 3), np.uint8)
    crop = get_rotate_crop_image(image, np.float32(rect(10, 10, 40, 130)))
    assert crop.shape[:2] == (30, 120)  # 120 tall x 30 wide, turned to lie flat
    crop = get_rotate_crop_image(image, np.float32(rect(10, 10, 40, 50)))
    assert crop.shape[:2] == (40, 30)  # ratio 1.33 < 1.5: kept


def test_sorted_boxes_reading_order() -> None:
    boxes = [
        rect(300, 100, 350, 120),  # line 2, right   (top y 100)
        rect(10, 10, 60, 30),  # line 1, left        (top y 10)
        rect(200, 102, 250, 122),  # line 2, middle  (top y 102)
        rect(100, 5, 150, 25),  # line 1, right      (top y 5: higher, yet to the right)
        rect(100, 104, 150, 124),  # line 2, left    (top y 104)
        rect(0, 200, 50, 220),  # line 3
    ]
    order = sorted_boxes(boxes)
    assert order == [1, 3, 4, 2, 0, 5]
    assert sorted_boxes([]) == []


# ------------------------------------------------------------------------------------------ real models


@pytest.fixture(scope="module")
def pipeline() -> OcrPipeline:
    return build_pipeline(runtime=RuntimeOptions(threads=2))


def test_blank_image_gives_an_empty_result(pipeline: OcrPipeline) -> None:
    result = pipeline.run(np.full((480, 640, 3), 255, np.uint8))
    assert result.lines == [] and result.dropped == 0
    assert set(result.timing_ms) == {"det", "crop", "cls", "rec", "total"}
    assert pipeline(np.zeros((64, 64, 3), np.uint8)) == []


def test_pipeline_reads_the_sample_image(pipeline: OcrPipeline) -> None:
    sample = open_dataset(sample_root() / "det", "det").samples[0]  # img_1: 6118 Store BUS Train SPA
    result = pipeline.run(load_image(sample))
    texts = [line.text for line in result.lines]
    assert {"Store", "BUS"} <= set(texts)
    metric = E2EMetric()
    metric.update(result.to_prediction(), sample.target)
    assert metric.result()["correct"] >= 4
    ys = [line.polygon[0][1] for line in result.lines]
    assert ys[0] == min(ys)  # reading order: the top line first
    assert all(line.cls_label in {"0", "180"} and line.score >= 0.5 for line in result.lines)


def test_drop_score_removes_lines(pipeline: OcrPipeline) -> None:
    strict = OcrPipeline.from_stages(
        pipeline.stages["det"],
        pipeline.stages["cls"],
        pipeline.stages["rec"],
        PipelineConfig(drop_score=1.01),
    )
    sample = open_dataset(sample_root() / "det", "det").samples[0]
    result = strict.run(load_image(sample))
    assert result.lines == [] and result.dropped >= 5


def test_evaluate_e2e_on_the_sample(pipeline: OcrPipeline, tmp_path: Path) -> None:
    from ocrquant.pipeline.evaluate import evaluate_e2e

    dataset = open_dataset(sample_root() / "det", "det")
    out = tmp_path / "e2e.json"
    result = evaluate_e2e(pipeline, dataset, limit=2, output=out, progress=False)
    assert result.count == 2 and result.metrics["none"]["hmean"] > 0.8
    assert result.timing["latency_ms_mean"] > 0 and set(result.timing["stage_ms_mean"]) == {
        "det",
        "crop",
        "cls",
        "rec",
    }
    saved = json.loads(out.read_text())
    assert saved["metrics"]["none"]["correct"] == result.metrics["none"]["correct"]
    assert not out.with_suffix(".partial.jsonl").exists()
    with pytest.raises(OcrQuantError, match="vocabularies"):
        evaluate_e2e(pipeline, dataset, "weak", limit=1, progress=False)


def test_ocr_folder_skips_unreadable_images(pipeline: OcrPipeline, tmp_path: Path) -> None:
    from ocrquant.pipeline.run import ocr_images

    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "blank.png"), np.full((100, 200, 3), 255, np.uint8))
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    report = ocr_images(
        pipeline, images, draw=tmp_path / "drawn", json_out=tmp_path / "out.json", progress=False
    )
    assert [Path(i["image"]).name for i in report["images"]] == ["blank.png"]
    assert report["images"][0]["lines"] == []
    assert len(report["skipped"]) == 1 and "broken.jpg" in report["skipped"][0]["error"]
    assert (tmp_path / "drawn" / "blank_ocr.png").is_file()
    assert json.loads((tmp_path / "out.json").read_text())["skipped"][0]["image"].endswith("broken.jpg")
    with pytest.raises(OcrQuantError, match="cannot decode"):
        ocr_images(pipeline, images / "broken.jpg")


def test_draw_puts_text_beside_the_image() -> None:
    from ocrquant.pipeline import OcrLine
    from ocrquant.pipeline.draw import draw_ocr

    image = np.full((120, 300, 3), 200, np.uint8)
    lines = [OcrLine(rect(10, 10, 150, 50), "Hello", 0.9), OcrLine(rect(10, 60, 150, 100), "中文字", 0.8)]
    picture = draw_ocr(image, lines)
    assert picture.shape == (120, 600, 3)
    right = picture[:, 300:]
    assert (right[10:50, 10:150] < 128).any()  # text was drawn in the box on the white page
    assert (right[:, 200:] == 255).all()  # and nothing outside the boxes


def test_int8_zoo_model_must_be_quantized_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCRQUANT_HOME", str(tmp_path))
    with pytest.raises(OcrQuantError, match="ocrquant run --task"):
        resolve_stage_model("ppocrv3-det", "det", "int8")
    with pytest.raises(OcrQuantError, match="not a det model"):
        resolve_stage_model("ppocrv3-rec", "det", "int8")


def test_chain_report_rows(tmp_path: Path) -> None:
    """The five rows of the chain report; FP32 files stand in for INT8 ones, so every row must agree."""
    from ocrquant.pipeline.evaluate import ChainModels, E2EScoring, chain_report
    from ocrquant.zoo.resolve import resolve_model

    det, cls, rec = (str(resolve_model(f"ppocrv3-{s}").path) for s in ("det", "cls", "rec"))
    dataset = open_dataset(sample_root() / "det", "det")
    rows = chain_report(
        ChainModels(det, det, cls, cls, rec, rec), dataset, E2EScoring(limit=1, progress=False),
        runtime=RuntimeOptions(threads=2), output_dir=tmp_path,
    )  # fmt: skip
    assert [r["row"] for r in rows] == ["fp32", "det-int8", "cls-int8", "rec-int8", "all-int8"]
    assert rows[4]["precisions"] == {"det": "int8", "cls": "int8", "rec": "int8"}
    assert len({r["hmean"] for r in rows}) == 1 and rows[0]["hmean"] > 0.8
    assert all(r["size_mb"] > 10 and r["latency_ms_mean"] > 0 for r in rows)
    assert (tmp_path / "all-int8.json").is_file()


def test_cli_ocr_and_e2e(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    import typer
    from typer.testing import CliRunner

    from ocrquant.cli.ocr import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    image = tmp_path / "blank.png"
    cv2.imwrite(str(image), np.full((64, 128, 3), 255, np.uint8))
    res = runner.invoke(app, ["ocr", str(image), "--json", str(tmp_path / "o.json"), "--cls", "none"])
    assert res.exit_code == 0, res.output
    assert "no text found" in res.output
    assert json.loads((tmp_path / "o.json").read_text())["images"][0]["lines"] == []
    res = runner.invoke(app, ["e2e", "--data", str(sample_root() / "det"), "--limit", "1", "--threads", "2"])
    assert res.exit_code == 0, res.output
    assert "hmean" in res.output and "detection" in res.output
    # through the real entry point: a user error is one line and exit code 2
    env = {**os.environ, "OCRQUANT_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "ocrquant.cli.main", "ocr", str(image), "--precision", "int8"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "ocrquant run --task" in proc.stderr and "Traceback" not in proc.stderr
