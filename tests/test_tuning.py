"""The tuning layer's executors: ``auto``'s range search gives the same recipe and scores in this
process, in two local worker processes and on a local Ray instance; failures name the trial and the
worker; an unreachable Ray address is one line, exit 2, within 30 s."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ocrquant.data import sample_root
from ocrquant.quantization import QuantConfig
from ocrquant.tuning import method_search
from ocrquant.tuning.executor import (
    ExecutorConfig,
    InProcessExecutor,
    ProcessExecutor,
    TrialFailed,
    check_ray_address,
    create_executor,
)
from ocrquant.tuning.method_search import quantize_auto
from ocrquant.zoo.resolve import resolve_model
from tests.conftest import sample_calib

HAS_RAY = importlib.util.find_spec("ray") is not None


def _config(tmp_path: Path) -> QuantConfig:
    # no accuracy algorithms: the range candidates are what runs on the executor
    cache = tmp_path / "cache"
    return QuantConfig(
        method="auto", calib_size=12, batch_size=4, algorithms=[], cache_dir=cache, progress=False
    )


def _search(cls_model: Path, out: Path, executor) -> tuple[list[dict], dict]:
    _, rows = quantize_auto(
        resolve_model(cls_model), "cls", sample_calib(), out, _config(out.parent), 24, executor
    )
    side = method_search.read_sidecar(out)
    return rows, side["method_search"]["chosen"]


def _scores(rows: list[dict]) -> list[tuple]:
    return [(r["method"], str(r["options"]), r["val_fidelity"], r["val_metric"]) for r in rows]


@pytest.fixture(scope="module")
def in_process(cls_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("inproc") / "cls.onnx"
    rows, chosen = _search(cls_model, out, InProcessExecutor())
    return rows, chosen, out.read_bytes()


def test_local_workers_give_the_in_process_search(cls_model, tmp_path, in_process):
    rows, chosen, model = in_process
    executor = create_executor(ExecutorConfig(workers=2))
    assert isinstance(executor, ProcessExecutor) and executor.threads() >= 1
    try:
        got_rows, got_chosen = _search(cls_model, tmp_path / "cls.onnx", executor)
    finally:
        executor.close()
    assert len(rows) == len(method_search.CANDIDATES)
    assert _scores(got_rows) == _scores(rows) and got_chosen == chosen
    assert (tmp_path / "cls.onnx").read_bytes() == model


@pytest.mark.skipif(not HAS_RAY, reason="the ray extra is not installed")
def test_local_ray_cluster_gives_the_in_process_search(cls_model, tmp_path, in_process):
    import ray

    rows, chosen, model = in_process
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        executor = create_executor(ExecutorConfig(ray_address="auto"))  # joins the running instance
        assert executor.name == "ray"
        got_rows, got_chosen = _search(cls_model, tmp_path / "cls.onnx", executor)
        executor.close()
    finally:
        ray.shutdown()
    assert _scores(got_rows) == _scores(rows) and got_chosen == chosen
    assert (tmp_path / "cls.onnx").read_bytes() == model


def test_a_failing_trial_names_itself_and_its_worker_and_leaves_no_model(cls_model, tmp_path, monkeypatch):
    # a candidate whose options the calibrator refuses, raised inside the worker process
    monkeypatch.setattr(method_search, "CANDIDATES", [("min_max", {}), ("percentile", {"percentile": 200})])
    out = tmp_path / "cls.onnx"
    executor = ProcessExecutor(2)
    try:
        with pytest.raises(TrialFailed) as err:
            quantize_auto(
                resolve_model(cls_model), "cls", sample_calib(), out, _config(tmp_path), 24, executor
            )
    finally:
        executor.close()
    message = str(err.value)
    assert message.startswith("trial percentile-200 failed on ") and " pid " in message
    assert "percentile must be in (50, 100], got 200" in message and "\n" not in message
    assert not out.exists() and not list(tmp_path.glob("cls*"))


def test_an_address_that_does_not_answer_is_one_line_exit_2(cls_model, tmp_path):
    with pytest.raises(Exception, match="write HOST:PORT"):
        check_ray_address("no-port-here")
    t = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "ocrquant.cli.main", "quantize", "-m", str(cls_model), "--task", "cls",
         "--calib-data", str(sample_root() / "rec"), "-o", str(tmp_path / "x.onnx"), "--ray", "127.0.0.1:9"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert time.monotonic() - t < 30
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "127.0.0.1:9" in lines[0] and "does not answer" in lines[0], proc.stderr
    assert not (tmp_path / "x.onnx").exists()


def _probe_rows(result) -> list[tuple]:
    return [(r.name, r.metric, r.delta_points, r.snr_db, r.fidelity) for r in result.rows]


@pytest.mark.skipif(not HAS_RAY, reason="the ray extra is not installed")
def test_sensitivity_probes_score_the_same_in_workers_and_on_ray(cls_model, tmp_path):
    """The budget search's ranking and ``ocrquant sensitivity`` score one variant per layer; as probes
    on two local workers and on a local Ray instance (each worker decoding the validation crops and
    running FP32 once) every row equals the in-process one."""
    import onnx
    import ray

    from ocrquant.analysis.sensitivity import Validator, VariantBuilder, analyze_layers
    from ocrquant.data import open_dataset
    from ocrquant.data.split import split_calibration
    from ocrquant.tasks import get_task_class
    from ocrquant.tuning.pair import quantize_pair
    from ocrquant.tuning.probes import executor_scorer

    ds = open_dataset(sample_root() / "rec", "cls")
    cfg = QuantConfig(
        method="min_max", calib_size=16, batch_size=4, cache_dir=tmp_path / "cache", progress=False
    )
    pair = quantize_pair(resolve_model(cls_model), "cls", ds, tmp_path, cfg)
    builder = VariantBuilder(onnx.load(str(pair.quantized.output)), onnx.load(str(pair.reference)))
    split = split_calibration(ds, cfg.calib_size, cfg.seed, 24)
    validator = Validator(
        get_task_class("cls")(), split.validation, pair.float_model, threads=1, progress=False
    )
    layers = builder.layers[:10]

    def rank(executor) -> list[tuple]:
        result = analyze_layers(builder, validator, Path(pair.quantized.output), mode="only-quantized",
                                latency="none", work_dir=tmp_path, layers=layers,
                                scorer=executor_scorer(executor, validator))  # fmt: skip
        return _probe_rows(result)

    here = rank(None)
    assert len(here) == 10 and len({r[3] for r in here}) > 1  # the layers do differ
    workers = ProcessExecutor(2)
    try:
        assert rank(workers) == here
    finally:
        workers.close()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        executor = create_executor(ExecutorConfig(ray_address="auto"))
        assert rank(executor) == here
        executor.close()
    finally:
        ray.shutdown()
