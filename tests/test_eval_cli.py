"""`ocrquant eval` end to end on the embedded sample: figures, resume, and bad input handling."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ocrquant.api import eval_model
from ocrquant.data import sample_root
from tests.conftest import zoo_model_path


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "ocrquant.cli.main", *args], capture_output=True, text=True, cwd=cwd, env=env
    )


def test_eval_rec_sample_reads_every_word(tmp_path: Path) -> None:
    out = tmp_path / "rec.json"
    result = eval_model("ppocrv3-rec", sample_root() / "rec", output=out, progress=False)
    # the synthetic crops are clean, so the real PP-OCRv3 recogniser reads nearly all of them
    assert result.count == 48 and result.metrics["acc"] >= 0.9
    saved = json.loads(out.read_text())
    assert saved["metrics"]["acc"] == result.metrics["acc"]
    assert saved["settings"]["batch_size"] == 1 and len(saved["samples"]) == 48
    assert not out.with_suffix(".partial.jsonl").exists()


def test_eval_resumes_from_partial(tmp_path: Path) -> None:
    out = tmp_path / "cls.json"
    full = eval_model("ppocrv3-cls", sample_root() / "rec", limit=20, progress=False)
    # simulate an interrupted run: keep the header and the first 8 sample lines only
    eval_model("ppocrv3-cls", sample_root() / "rec", limit=20, output=out, progress=False)
    assert out.exists()
    partial = out.with_suffix(".partial.jsonl")
    payload = json.loads(out.read_text())
    header = {"settings": payload["settings"]}
    lines = [json.dumps(header)] + [
        json.dumps({"key": s["key"], "prediction": s["prediction"]}) for s in payload["samples"][:8]
    ]
    partial.write_text("\n".join(lines) + "\n")
    out.unlink()
    resumed = eval_model("ppocrv3-cls", sample_root() / "rec", limit=20, output=out, progress=False)
    assert resumed.timing["images_evaluated_now"] == 12
    assert resumed.metrics == full.metrics


def test_a_finished_evaluation_is_reused_only_with_the_same_settings(tmp_path: Path) -> None:
    out = tmp_path / "cls.json"
    first = eval_model("ppocrv3-cls", sample_root() / "rec", limit=12, output=out, progress=False)
    stamp = out.stat().st_mtime_ns
    again = eval_model("ppocrv3-cls", sample_root() / "rec", limit=12, output=out, progress=False)
    assert out.stat().st_mtime_ns == stamp  # nothing evaluated, nothing rewritten
    assert again.metrics == first.metrics and again.timing == first.timing
    other = eval_model("ppocrv3-cls", sample_root() / "rec", limit=10, output=out, progress=False)
    assert other.count == 10 and other.timing["images_evaluated_now"] == 10  # a setting changed


def test_batched_rec_close_to_batch_one() -> None:
    one = eval_model("ppocrv3-rec", sample_root() / "rec", progress=False)
    eight = eval_model("ppocrv3-rec", sample_root() / "rec", batch_size=8, progress=False)
    assert abs(one.metrics["acc"] - eight.metrics["acc"]) <= 0.05


def test_corrupt_image_is_skipped_and_counted(tmp_path: Path) -> None:
    data = tmp_path / "rec"
    shutil.copytree(sample_root() / "rec", data)
    (data / "images" / "word_3.png").write_bytes(b"not a png at all")
    result = eval_model("ppocrv3-rec", data, progress=False)
    assert result.count == 47
    assert len(result.skipped) == 1 and "word_3.png" in result.skipped[0]["error"]


def _one_line_error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0] and "Traceback" not in proc.stderr


def test_cli_eval_prints_table() -> None:
    proc = run_cli("eval", "-m", "ppocrv3-det", "-d", str(sample_root() / "det"), "--limit", "2")
    assert proc.returncode == 0, proc.stderr
    assert "hmean" in proc.stdout and "images/s" in proc.stdout


def test_cli_bad_gt_line(tmp_path: Path) -> None:
    data = tmp_path / "det"
    shutil.copytree(sample_root() / "det", data)
    gt = sorted((data / "gt").glob("*.txt"))[0]
    gt.write_text("10,20,30,oops\n", encoding="utf-8")
    _one_line_error(run_cli("eval", "-m", "ppocrv3-det", "-d", str(data)), gt.name)


def test_cli_empty_dataset(tmp_path: Path) -> None:
    _one_line_error(run_cli("eval", "-m", "ppocrv3-rec", "-d", str(tmp_path)), str(tmp_path))


def test_cli_missing_model(tmp_path: Path) -> None:
    _one_line_error(
        run_cli("eval", "-m", str(tmp_path / "nope.onnx"), "-d", str(sample_root() / "rec")), "nope.onnx"
    )


def test_cli_wrong_input_rank(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8])  # a rec-shaped output
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph([helper.make_node("Unsqueeze", ["x", "axes"], ["y"])], "g", [x], [y], [axes])
    model = helper.make_model(graph)
    model.opset_import[0].version = 13
    model.ir_version = 8
    path = tmp_path / "flat.onnx"
    onnx.save(model, path)
    _one_line_error(
        run_cli("eval", "--task", "rec", "-m", str(path), "-d", str(sample_root() / "rec")), "rank 4"
    )


@pytest.mark.parametrize(("model", "task"), [("ppocrv3-rec", "det"), ("ppocrv3-det", "rec")])
def test_cli_model_file_of_another_task(model: str, task: str) -> None:
    """A bare .onnx of another task (no zoo name to tell): refused from its declared output shape
    before any image runs, instead of an onnxruntime broadcast error from inside the graph."""
    path = str(zoo_model_path(model))
    proc = run_cli("eval", "--task", task, "-m", path, "-d", str(sample_root() / task))
    _one_line_error(proc, path)
    assert f"is this a {task} model?" in proc.stderr


def test_cli_corrupt_model(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(np.random.default_rng(0).bytes(300))
    _one_line_error(
        run_cli("eval", "--task", "rec", "-m", str(path), "-d", str(sample_root() / "rec")), "broken.onnx"
    )


def test_cli_corrupt_sidecar_is_named(tmp_path: Path) -> None:
    """A quantized model's task comes from its ``.quant.json``; a corrupt one is reported by name."""
    model = tmp_path / "cls.int8.onnx"
    shutil.copyfile(zoo_model_path("ppocrv3-cls"), model)
    (tmp_path / "cls.int8.quant.json").write_text('{"task": "cls", ')  # cut short
    proc = run_cli("eval", "-m", str(model), "-d", str(sample_root() / "rec"))
    _one_line_error(proc, "cls.int8.quant.json")


def test_cli_option_for_wrong_task() -> None:
    proc = run_cli("eval", "-m", "ppocrv3-rec", "-d", str(sample_root() / "rec"), "--box-thresh", "0.5")
    _one_line_error(proc, "box_thresh")


@pytest.mark.parametrize(
    "cmd", [["--help"], ["eval", "--help"], ["models", "--help"], ["data", "synth", "--help"]]
)
def test_help_everywhere(cmd: list[str]) -> None:
    proc = run_cli(*cmd)
    assert proc.returncode == 0 and "Usage" in proc.stdout


def test_image_transform_and_fidelity_to_the_clean_run() -> None:
    """``image_transform`` reaches every decoded image; ``fidelity`` scores a run against another's
    predictions (1.0 against itself, and it counts every changed reading)."""
    from ocrquant.api import build_task
    from ocrquant.data import open_dataset
    from ocrquant.evaluation import evaluate, fidelity
    from ocrquant.runtime import RuntimeOptions, create_runner
    from ocrquant.zoo.resolve import resolve_model

    model = resolve_model("ppocrv3-rec")
    task = build_task("rec", model)
    data = open_dataset(sample_root() / "rec", "rec")
    runner = create_runner(model.path, "onnxruntime", RuntimeOptions(threads=2))
    clean = evaluate(task, runner, data, limit=12, progress=False)
    seen = []

    def blank_half(image: np.ndarray, sample) -> np.ndarray:
        seen.append(sample.key)
        return np.full_like(image, 255) if len(seen) % 2 else image

    changed = evaluate(task, runner, data, limit=12, progress=False, image_transform=blank_half)
    assert len(seen) == 12
    assert fidelity(task, clean, clean)["acc"] == 1.0
    assert fidelity(task, changed, clean)["acc"] == pytest.approx(0.5)  # the blanked half reads nothing
    assert changed.metrics["acc"] < clean.metrics["acc"]
