"""Interruption and resume: a resumed result equals a fresh one, and only when nothing that determines
it changed; a killed process's leftovers are cleaned; damaged cache entries are rebuilt.

The interruption is real: evaluation stops with the KeyboardInterrupt Ctrl-C or SIGTERM raises, from
the image hook evaluate() offers, after a few images (its partial log then holds them).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import zoo_model_path


def _small_rec(root: Path, n: int = 24) -> Path:
    from ocrquant.data import sample_root

    src = sample_root() / "rec"
    lines = (src / "gt.txt").read_text(encoding="utf-8-sig").splitlines()[:n]
    (root / "images").mkdir(parents=True)
    for line in lines:
        name = line.split(",")[0].strip()
        shutil.copy(src / "images" / name, root / "images" / name)
    (root / "gt.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def _evaluate(model: Path, data: Path, output: Path, stop_after: int | None = None):
    """``eval`` through the API; with ``stop_after`` it is interrupted after that many images."""
    from ocrquant.api import build_task
    from ocrquant.data import open_dataset
    from ocrquant.evaluation import evaluate
    from ocrquant.runtime import RuntimeOptions, create_runner
    from ocrquant.zoo.resolve import resolve_model

    resolved = resolve_model(model)
    seen = {"n": 0}

    def interrupt(image: np.ndarray, sample: object) -> np.ndarray:
        seen["n"] += 1
        if stop_after is not None and seen["n"] > stop_after:
            raise KeyboardInterrupt
        return image

    return evaluate(
        build_task("cls", resolved),
        create_runner(model, "onnxruntime", RuntimeOptions(threads=1)),
        open_dataset(data, "cls"),
        model_name="m",
        batch_size=1,
        output=output,
        progress=False,
        extra_settings={"model_path": str(model)},
        image_transform=interrupt,
    )


def _interrupted(model: Path, data: Path, output: Path, after: int = 10) -> None:
    with pytest.raises(KeyboardInterrupt):
        _evaluate(model, data, output, stop_after=after)
    partial = output.with_suffix(".partial.jsonl")
    assert len(partial.read_text().splitlines()) > 1, "the interrupted run left no partial results"


def _predictions(result) -> list:
    return [s.get("prediction") for s in result.samples]


@pytest.fixture()
def two_cls_models(tmp_path: Path) -> tuple[Path, Path]:
    """The zoo's cls model and a second one that answers differently: its weights with seeded noise
    (the v3 and v6 cls files of the zoo are the same bytes)."""
    import onnx
    from onnx import numpy_helper

    original = zoo_model_path("ppocrv3-cls")
    model = onnx.load(str(original))
    rng = np.random.default_rng(0)
    constants = [a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute]
    for tensor in [*model.graph.initializer, *constants]:  # paddle2onnx writes weights as Constants
        w = numpy_helper.to_array(tensor)
        if w.dtype == np.float32 and w.size > 1000:
            noisy = w + rng.normal(0, 0.5 * float(np.std(w)), w.shape).astype(np.float32)
            tensor.CopyFrom(numpy_helper.from_array(noisy, tensor.name))
    assert any(True for _ in constants) or model.graph.initializer
    other = tmp_path / "other.onnx"
    onnx.save(model, str(other))
    return original, other


def test_resume_continues_when_nothing_changed(tmp_path: Path, two_cls_models, caplog) -> None:
    data = _small_rec(tmp_path / "rec")
    model = tmp_path / "m.onnx"
    shutil.copy(two_cls_models[0], model)
    fresh = _evaluate(model, data, tmp_path / "fresh.json")
    _interrupted(model, data, tmp_path / "r.json")
    with caplog.at_level(logging.INFO, logger="ocrquant"):
        resumed = _evaluate(model, data, tmp_path / "r.json")
    assert "resuming" in caplog.text
    assert resumed.metrics == fresh.metrics
    assert _predictions(resumed) == _predictions(fresh)


def test_resume_after_model_replaced_gives_the_new_models_result(
    tmp_path: Path, two_cls_models, caplog
) -> None:
    """The reported bug: a partial log of model A was resumed for model B at the same path."""
    data = _small_rec(tmp_path / "rec")
    model = tmp_path / "m.onnx"
    shutil.copy(two_cls_models[0], model)
    _interrupted(model, data, tmp_path / "r.json")
    shutil.copy(two_cls_models[1], model)
    with caplog.at_level(logging.INFO, logger="ocrquant"):
        resumed = _evaluate(model, data, tmp_path / "r.json")
    fresh = _evaluate(model, data, tmp_path / "fresh.json")
    assert "model_sha256" in caplog.text and "starting afresh" in caplog.text
    assert _predictions(resumed) == _predictions(fresh)
    assert resumed.metrics == fresh.metrics


def test_resume_after_labels_changed_starts_afresh(tmp_path: Path, two_cls_models, caplog) -> None:
    data = _small_rec(tmp_path / "rec")
    model = two_cls_models[0]
    _interrupted(model, data, tmp_path / "r.json")
    gt = data / "gt.txt"
    lines = gt.read_text().splitlines()
    gt.write_text("\n".join(lines[:-1]) + "\n")  # one sample fewer: another listing
    with caplog.at_level(logging.INFO, logger="ocrquant"):
        resumed = _evaluate(model, data, tmp_path / "r.json")
    assert "data_listing" in caplog.text
    assert resumed.count == 2 * (len(lines) - 1)  # cls: each crop upright and turned 180


def test_same_relative_data_from_another_folder_is_another_set(tmp_path: Path, monkeypatch) -> None:
    """``-d rec`` from two working directories names two sets: the key holds the resolved path."""
    from ocrquant.data import open_dataset
    from ocrquant.evaluation.evaluate import resume_key

    keys = []
    for folder in ("a", "b"):
        _small_rec(tmp_path / folder / "rec")
        monkeypatch.chdir(tmp_path / folder)
        keys.append(resume_key(open_dataset(Path("rec"), "cls").samples, Path("rec")))
    assert keys[0]["data"] != keys[1]["data"]


def test_sidecar_of_another_model_version_is_ignored(tmp_path: Path, two_cls_models, caplog) -> None:
    from ocrquant.fileio import read_sidecar, write_sidecar

    model = tmp_path / "m.int8.onnx"
    shutil.copy(two_cls_models[0], model)
    write_sidecar(model, {"task": "cls"})
    assert read_sidecar(model)["task"] == "cls"
    shutil.copy(two_cls_models[1], model)  # as if killed between the two renames, or replaced later
    with caplog.at_level(logging.WARNING, logger="ocrquant"):
        assert read_sidecar(model) == {}
    assert "another version" in caplog.text


def test_scratch_folders_of_killed_processes_are_swept(tmp_path: Path) -> None:
    import tempfile

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    pid = int(dead.stdout)
    orphan = Path(tempfile.gettempdir()) / f"ocrquant-quant-pid{pid}-test"
    orphan.mkdir()
    (orphan / "prepared.onnx").write_bytes(b"x" * 1000)
    mine = Path(tempfile.mkdtemp(prefix="ocrquant-quant-pid1-"))  # pid 1 is alive: kept
    out = tmp_path / "o.json"
    stale = tmp_path / f".o.json.pid{pid}-abc.tmp"
    stale.write_text("half")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "ocrquant.cli.main", "models", "list"], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        assert not orphan.exists()
        assert mine.exists()
        from ocrquant.fileio import write_json_atomic

        write_json_atomic(out, {"a": 1})
        assert not stale.exists()
    finally:
        shutil.rmtree(mine, ignore_errors=True)
        shutil.rmtree(orphan, ignore_errors=True)


def test_damaged_cached_model_is_extracted_again(tmp_path: Path, monkeypatch, caplog) -> None:
    """A truncated cached model failed forever while ``models fetch`` said all was well."""
    from ocrquant.zoo import ZOO
    from ocrquant.zoo.fetch import cache_home, fetch

    entry = ZOO["ppocrv3-cls"]
    wheel = cache_home() / "wheels" / entry.source.filename
    if not wheel.is_file():
        zoo_model_path("ppocrv3-cls")  # fills the real cache (or skips)
    home = tmp_path / "home"
    (home / "wheels").mkdir(parents=True)
    shutil.copy(wheel, home / "wheels" / wheel.name)
    monkeypatch.setenv("OCRQUANT_HOME", str(home))
    path = fetch("ppocrv3-cls")
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 3])
    with caplog.at_level(logging.WARNING, logger="ocrquant"):
        again = fetch("ppocrv3-cls")
    assert again.read_bytes() == good
    assert "damaged" in caplog.text


def test_damaged_default_calibration_set_is_rebuilt(tmp_path: Path, monkeypatch) -> None:
    from ocrquant.workflow import default_calibration_root

    monkeypatch.setenv("OCRQUANT_HOME", str(tmp_path / "home"))
    root = default_calibration_root()
    first = sorted((root / "rec" / "images").iterdir())[0]
    first.write_bytes(b"broken")
    (root / "rec" / "gt.txt").write_text("garbage\n")
    root2 = default_calibration_root()
    assert root2 == root
    from ocrquant.data import load_image, open_dataset

    ds = open_dataset(root / "rec", "rec")
    assert all(load_image(s) is not None for s in ds.samples[:3])
    assert json.loads((root / ".manifest.sha256.json").read_text())


def test_missing_extra_is_reported_before_any_download(tmp_path: Path, monkeypatch) -> None:
    """``-m ppocrv4-rec`` without the paddle extra once downloaded the 15 MB wheel first."""
    import ocrquant.frontends as frontends
    from ocrquant.errors import OcrQuantError
    from ocrquant.zoo.resolve import resolve_model

    monkeypatch.setenv("OCRQUANT_HOME", str(tmp_path / "home"))
    monkeypatch.setitem(frontends.FRONTEND_MODULES, "paddle", ("ocrquant_no_such_module",))
    with pytest.raises(OcrQuantError, match=r"optional extra .*ocrquant\[paddle\]"):
        resolve_model("ppocrv4-rec")
    assert not (tmp_path / "home" / "wheels").exists()


def test_damaged_calibration_cache_is_recomputed(tmp_path: Path, caplog) -> None:
    """A calibration cache entry that still loads but was altered would give wrong ranges silently."""
    from ocrquant.quantization import QuantConfig
    from ocrquant.tuning import quantize
    from ocrquant.zoo.resolve import resolve_model
    from tests.conftest import sample_calib

    model = zoo_model_path("ppocrv3-cls")
    cfg = QuantConfig(method="min_max", calib_size=8, cache_dir=tmp_path / "calib", progress=False)
    first = quantize(resolve_model(model), "cls", sample_calib(), tmp_path / "a.onnx", cfg)
    assert not first.cache_hit
    (npz,) = (tmp_path / "calib").glob("*.npz")
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    npz.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="ocrquant"):
        again = quantize(resolve_model(model), "cls", sample_calib(), tmp_path / "b.onnx", cfg)
    assert not again.cache_hit and "damaged calibration cache" in caplog.text
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
