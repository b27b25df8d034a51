"""``ocrquant run`` end to end on the embedded sample: quantize, evaluate float and INT8, time, report,
and resume without redoing finished steps."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from ocrquant.cli.main import register_commands


def test_run_writes_report_and_resumes(cls_model: Path, tmp_path: Path) -> None:
    # a copy outside the zoo, so the run does not publish into the user's INT8 model cache
    model = tmp_path / "cls.onnx"
    shutil.copy(cls_model, model)
    out = tmp_path / "run"
    args = ["run", "--task", "cls", "-m", f"cls={model}", "--method", "min_max", "--calib-size", "8",
            "--latency-inputs", "2", "--limit", "24", "-o", str(out)]  # fmt: skip
    first = CliRunner().invoke(register_commands(), args)
    assert first.exit_code == 0, first.output
    report = json.loads((out / "report.json").read_text())
    (row,) = report["rows"]
    assert row["task"] == "cls" and row["test_size"] == 24  # --limit counts cls samples (crop x rotation)
    assert 0.0 <= row["int8_metric"] <= 1.0 and row["float_metric"] > 0.5
    assert row["float_ms"] > 0 and row["int8_ms"] > 0 and row["int8_mb"] < row["float_mb"]
    assert f"| {row['model']} (cls, acc) |" in (out / "report.md").read_text()
    assert "auto search" not in row["details"]  # a method given: no search to report
    int8 = out / "cls" / "cls.int8.onnx"
    stamp = int8.stat().st_mtime_ns
    second = CliRunner().invoke(register_commands(), args)
    assert second.exit_code == 0, second.output
    assert int8.stat().st_mtime_ns == stamp  # the quantize step was found done, not redone
    assert json.loads((out / "report.json").read_text())["rows"][0]["int8_metric"] == row["int8_metric"]

    # --int8 scores a model made before (here the one just written) instead of quantizing: the same
    # figures, no calibration, the given file untouched
    given = tmp_path / "run-given"
    args = ["run", "--task", "cls", "-m", str(model), "--int8", str(int8), "--latency-inputs", "2",
            "--limit", "24", "-o", str(given)]  # fmt: skip
    third = CliRunner().invoke(register_commands(), args)
    assert third.exit_code == 0, third.output
    (again,) = json.loads((given / "report.json").read_text())["rows"]
    assert again["int8_metric"] == row["int8_metric"] and again["float_metric"] == row["float_metric"]
    assert again["details"]["quantization"].startswith("target ort-cpu; method min_max")  # its sidecar
    assert not (given / "cls" / "quantize.key.json").exists()
    assert int8.stat().st_mtime_ns == stamp


def test_run_with_a_budget_searches_on_held_out_images(cls_model: Path, tmp_path: Path) -> None:
    model = tmp_path / "cls.onnx"
    shutil.copy(cls_model, model)
    out = tmp_path / "run"
    args = ["run", "--task", "cls", "-m", f"cls={model}", "--method", "min_max", "--calib-size", "8",
            "--latency-inputs", "2", "--limit", "8", "--max-drop", "cls=100", "-o", str(out)]  # fmt: skip
    result = CliRunner().invoke(register_commands(), args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["max drop (points)"] == {"cls": 100.0}
    mixed = json.loads((out / "cls" / "cls.int8.mixed.json").read_text())
    # any model meets a 100 point budget: the search stops at the all-INT8 base, judged on held-out crops
    assert mixed["met"] and mixed["chosen"] == [] and mixed["validation"]["source"] == "calibration-holdout"
    assert "max drop (points): {'cls': 100.0}" in (out / "report.md").read_text()


def test_run_rejects_a_budget_it_cannot_read(tmp_path: Path) -> None:
    for value, says in (("ocr=1", "det, cls or rec"), ("rec=abc", "not a number"), ("-1", ">= 0")):
        proc = subprocess.run(
            [sys.executable, "-m", "ocrquant.cli.main", "run", "--task", "rec", "--max-drop", value,
             "-o", str(tmp_path / "r")],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and says in lines[0], proc.stderr
        assert not (tmp_path / "r").exists()


def test_sigterm_stops_a_quantize_without_leaving_scratch(tmp_path: Path) -> None:
    """``kill`` (SIGTERM) mid-run: the command unwinds like Ctrl-C, exit code 143, its temporary
    directories gone and no output written. PP-OCRv6 det's preparation and calibration take seconds,
    so the signal lands inside them."""
    import os
    import signal
    import time

    from ocrquant.data import sample_root
    from ocrquant.zoo.resolve import resolve_model

    model = resolve_model("ppocrv6-small-det").path  # fetched before the clock starts
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "det.int8.onnx"
    cmd = [sys.executable, "-m", "ocrquant.cli.main", "quantize", "-m", str(model), "--task", "det",
           "--calib-data", str(sample_root() / "det"), "--method", "min_max", "--no-cache",
           "-o", str(out)]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env={**os.environ, "TMPDIR": str(scratch)}, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while not any(scratch.iterdir()) and time.monotonic() < deadline:  # wait until it has scratch
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated" in err and "Traceback" not in err
    assert not [p for p in scratch.iterdir() if p.name.startswith("ocrquant-")]
    assert not out.exists()


def test_run_with_an_input_shape_scores_and_quantizes_the_pinned_model(tmp_path: Path) -> None:
    """``run --input-shape -1 3 48 320``: the float model scored, the one quantized and the INT8 model
    written all declare the fixed C x H x W (what a static-shape compiler takes), the batch stays
    free for ``--batch-size``, and the pinned copy keeps the dictionary."""
    import onnx

    from ocrquant.onnx_shapes import declared_input_shape
    from tests.conftest import zoo_model_path

    model = tmp_path / "rec.onnx"
    shutil.copy(zoo_model_path("ppocrv3-rec"), model)
    out = tmp_path / "run"
    args = ["run", "--task", "rec", "-m", f"rec={model}", "--method", "min_max", "--calib-size", "8",
            "--input-shape", "-1", "3", "48", "320", "--batch-size", "4", "--calib-batch-size", "4",
            "--latency-inputs", "2", "--limit", "16", "-o", str(out)]  # fmt: skip
    done = CliRunner().invoke(register_commands(), args)
    assert done.exit_code == 0, done.output
    pinned, int8 = out / "rec" / "rec.fixed.onnx", out / "rec" / "rec.int8.onnx"
    for path in (pinned, int8):
        dims = declared_input_shape(onnx.load(str(path)))
        assert dims[1:] == [3, 48, 320] and not (isinstance(dims[0], int) and dims[0] > 0), (path, dims)
    assert any(p.key == "character" for p in onnx.load(str(pinned)).metadata_props)
    (row,) = json.loads((out / "report.json").read_text())["rows"]
    assert row["test_size"] == 16 and row["float_metric"] > 0.5
    # long crops are squeezed into the pinned width, as the pinned model cannot take a wider batch
    for name in ("eval_float.json", "eval_int8.json"):
        assert json.loads((out / "rec" / name).read_text())["settings"]["task_config"]["fixed_width"]
