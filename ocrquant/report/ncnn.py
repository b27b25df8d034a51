"""The ncnn INT8 report: ncnn FP32, ncnn INT8 and onnxruntime FP32 on one test set, with latency,
as one :class:`ocrquant.report.ReportRow` (what ``ocrquant ncnn report`` and ``ocrquant run --target
ncnn`` print)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ocrquant.data import load_image, open_dataset, sample_calibration
from ocrquant.errors import OcrQuantError
from ocrquant.evaluation import EvalResult, evaluate
from ocrquant.evaluation.evaluate import preprocessed_inputs
from ocrquant.frontends.ncnn_export import ncnn_model_for
from ocrquant.quantization.ncnn_int8 import (
    NcnnQuantConfig,
    quantize_ncnn,
    read_sidecar,
)
from ocrquant.report.table import ReportRow
from ocrquant.runtime import RuntimeOptions, create_runner
from ocrquant.runtime.timing import interleaved_runs
from ocrquant.zoo.resolve import resolve_model
from ocrquant.zoo.task import build_task, infer_task


def _file_sha(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()[:16]


def _eval_once(
    task_obj: Any,
    runner: Any,
    dataset: Any,
    name: str,
    out: Path,
    limit: int | None,
    settings: dict[str, Any],
) -> Any:
    """Evaluate, reusing ``out`` when it was written with the same settings (model hash included), and
    resuming a partial run otherwise (the evaluator's own partial log)."""

    if out.is_file():
        try:
            done = json.loads(out.read_text())
            if {k: done["settings"].get(k) for k in settings} == settings and done["settings"].get(
                "limit"
            ) == limit:
                return EvalResult(**done)
        except (ValueError, KeyError, TypeError):
            pass
    return evaluate(
        task_obj, runner, dataset, model_name=name, limit=limit, output=out, extra_settings=settings
    )


@dataclass(frozen=True)
class NcnnReportConfig:
    """Where the ncnn report writes and how it evaluates and times (the INT8 recipe is a
    :class:`NcnnQuantConfig`)."""

    out_dir: Path = Path("runs/ncnn")
    calib_size: int = 200
    seed: int = 0
    limit: int | None = None  # test images scored (None: all)
    threads: int = 2
    latency_images: int = 10
    latency_rounds: int = 3
    task_options: dict[str, Any] | None = None
    compare_onnxruntime: bool = True
    fallback_images: int = 3
    progress: bool = True


def ncnn_report(
    model: str | Path,
    task: str | None,
    test_data: str | Path,
    calib_data: str | Path,
    report: NcnnReportConfig | None = None,
    quant: NcnnQuantConfig | None = None,
) -> Any:
    """Float vs INT8 in ncnn for one model: metric on ``test_data``, model size, interleaved latency.

    The float model is the pnnx conversion of ``model`` (cached beside its ONNX file); the INT8 model,
    its calibration table and blob statistics go to ``out_dir``. With ``compare_onnxruntime`` the ONNX
    model is also evaluated with onnxruntime, so the report proves the ncnn float model scores the same.
    ``int8_layers``: see :func:`quantize_ncnn` (``faster``: only the layers INT8 speeds up here).
    ``max_float`` > 0 enables :func:`sensitivity_fallback` on the first ``fallback_images`` calibration
    images. Returns a :class:`ocrquant.report.ReportRow` (``details`` holds the rest). ``quant`` None:
    the default recipe with no layer kept float by the sensitivity fallback.
    """
    rep = report or NcnnReportConfig()
    quant = quant or NcnnQuantConfig(max_float=0)
    out_dir, calib_size, seed, limit = Path(rep.out_dir), rep.calib_size, rep.seed, rep.limit
    threads, latency_images, latency_rounds = rep.threads, rep.latency_images, rep.latency_rounds
    task_options, fallback_images, progress = rep.task_options, rep.fallback_images, rep.progress
    method, int8_layers, max_float = quant.method, quant.int8_layers, quant.max_float
    resolved = resolve_model(model)
    task_name = infer_task(resolved, task)
    task_obj = build_task(task_name, resolved, task_options)
    test_set = open_dataset(Path(test_data), task_name)
    calib_set = open_dataset(Path(calib_data), task_name)
    if test_set.root.resolve() == calib_set.root.resolve():
        raise OcrQuantError("calibration and test data are the same directory", calib_set.root)
    out_dir.mkdir(parents=True, exist_ok=True)
    float_model = ncnn_model_for(resolved.path)
    picked = sample_calibration(calib_set, calib_size, seed)

    def calib_inputs() -> Iterable[np.ndarray]:
        for s in picked:
            yield task_obj.preprocess([load_image(s)]).inputs

    int8_param = out_dir / f"{resolved.name}.int8.ncnn.param"
    stats_key = json.dumps(
        {"calib": str(calib_set.root), "keys": [s.key for s in picked], "task_config": repr(task_obj.config)}
    )
    q = quantize_ncnn(
        float_model.param,
        calib_inputs,
        int8_param,
        replace(quant, calib_size=len(picked), threads=threads, progress=progress),
        stats_cache=out_dir / f"{resolved.name}.ncnn_stats.npz",
        stats_key=stats_key,
        fallback_inputs=[task_obj.preprocess([load_image(s)]).inputs for s in picked[:fallback_images]]
        if max_float > 0
        else None,
    )
    opts = RuntimeOptions(threads=threads)
    runners = {
        "float": create_runner(float_model.param, "ncnn", opts),
        "int8": create_runner(q.param, "ncnn", opts),
    }
    files = {"float": [float_model.param, float_model.bin], "int8": [q.param, q.bin]}
    results = {}
    for key, runner in runners.items():
        settings = {"backend": "ncnn", "model_sha": _file_sha(files[key])}
        results[key] = _eval_once(
            task_obj,
            runner,
            test_set,
            f"{resolved.name}-ncnn-{key}",
            out_dir / f"eval_ncnn_{key}.json",
            limit,
            settings,
        )
    ort_metric = None
    if rep.compare_onnxruntime:
        ort_runner = create_runner(resolved.path, "onnxruntime", opts)
        ort_res = _eval_once(
            task_obj,
            ort_runner,
            test_set,
            f"{resolved.name}-onnxruntime",
            out_dir / "eval_onnxruntime_float.json",
            limit,
            {"backend": "onnxruntime", "model_sha": _file_sha([resolved.path])},
        )
        ort_metric = ort_res.primary
    lat_inputs = preprocessed_inputs(task_obj, test_set, latency_images)
    lat = interleaved_runs(runners, {k: lat_inputs for k in runners}, rounds=latency_rounds, warmup=1)
    size = {k: sum(p.stat().st_size for p in v) / 2**20 for k, v in files.items()}
    return ReportRow.from_evals(
        resolved.name,
        task_name,
        results["float"],
        results["int8"],
        (lat["float"].median_ms, lat["int8"].median_ms),
        (size["float"], size["int8"]),
        task_obj=task_obj,
        framework=resolved.framework,
        float_nodes=q.float_weight_layers,
        details={
            "backend": "ncnn",
            "onnxruntime float metric": ort_metric,
            "calibration": {
                "method": method,
                "images": q.calib_size,
                "data": str(calib_set.root),
                "seed": seed,
            },
            "quantized layers": len(q.quantized_layers),
            "requantized layers": len(q.requantized_layers),
            "int8 layers": int8_layers,
            "kept float, slower in INT8 here": q.slower_in_int8,
            "kept float by sensitivity": read_sidecar(q.param).get("fallback", {}).get("kept_float", []),
            "float model": str(float_model.param),
            "int8 model": str(q.param),
            "int8 table": str(q.table),
            "size ratio": round(size["int8"] / size["float"], 4),
            "latency": {k: vars(v) for k, v in lat.items()},
            "threads": threads,
            "ncnn conversion": {
                k: float_model.info.get(k) for k in ("route", "max_abs_diff_vs_onnxruntime", "onnx_fixes")
            },
        },
    )
