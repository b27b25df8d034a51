"""``ocrquant run``: prepare -> calibrate -> quantize -> evaluate float and INT8 -> report, per task.

Every step writes its result into the run directory before the next starts, and a step whose
result is already there (same settings) is skipped, so an interrupted run resumes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx

from ocrquant.data import open_dataset, sample_root
from ocrquant.data.synth import generate
from ocrquant.errors import OcrQuantError
from ocrquant.evaluation import EvalResult, evaluate
from ocrquant.evaluation.evaluate import preprocessed_inputs
from ocrquant.fileio import (
    file_fingerprint,
    manifest_intact,
    read_sidecar,
    sha256_file,
    write_bytes_atomic,
    write_json_atomic,
    write_manifest,
    write_sidecar,
    write_text_atomic,
)
from ocrquant.onnx_shapes import declared_input_shape, pin_input_shape
from ocrquant.pipeline.build import int8_model_path
from ocrquant.pipeline.evaluate import ChainModels, E2EScoring, chain_report, default_vocab_dir
from ocrquant.quantization import QuantConfig
from ocrquant.quantization.graph import is_quantized
from ocrquant.quantization.ncnn_int8 import DEFAULT_METHOD, NcnnQuantConfig
from ocrquant.report import ReportRow, render_markdown
from ocrquant.report.figures import TaskFigures, speed_size_figure, task_figures
from ocrquant.report.html import render_html
from ocrquant.report.ncnn import NcnnReportConfig, ncnn_report
from ocrquant.runtime import RuntimeOptions, create_runner
from ocrquant.runtime.timing import interleaved_latency
from ocrquant.tuning import quantize
from ocrquant.tuning.budget import BudgetConfig, escalate_to_budget, quantize_with_budget
from ocrquant.tuning.executor import ExecutorConfig, executor_for
from ocrquant.tuning.method_search import search_summary
from ocrquant.zoo import ZOO
from ocrquant.zoo.fetch import cache_home
from ocrquant.zoo.registry import DEFAULT_CHAIN
from ocrquant.zoo.resolve import ResolvedModel, resolve_model
from ocrquant.zoo.task import build_task, input_shape_options

log = logging.getLogger("ocrquant")

DEFAULT_MODELS = DEFAULT_CHAIN
#: which kind of labelled set each task reads (cls is derived from a recognition set)
DATA_KIND = {"det": "det", "cls": "rec", "rec": "rec"}


@dataclass
class RunConfig:
    """Everything ``run`` needs; the defaults run the embedded sample end to end in a few minutes."""

    tasks: list[str] = field(default_factory=lambda: ["det", "cls", "rec"])
    models: dict[str, str] = field(default_factory=dict)
    data: dict[str, Path] = field(default_factory=dict)  # keyed by data kind: "det" | "rec"
    calib_data: dict[str, Path] = field(default_factory=dict)
    out_dir: Path = Path("runs/latest")
    method: str | None = None  # None: the quantizer's default
    target: str = "ort-cpu"
    calib_size: int = 200
    limit: int | None = None
    threads: int = 2
    latency_inputs: int = 16
    framework_backend: str | None = None  # "paddle" / "torch": also evaluate the source framework
    backend: str = "onnxruntime"  # or "ncnn": the model converted with pnnx, INT8 written for ncnn
    extra_quant: dict[str, Any] = field(default_factory=dict)
    #: accuracy budget in points per task (``--max-drop rec=1.0``): the most sensitive blocks stay float
    #: until INT8 is within it on held-out calibration-side images (never the test set)
    max_drop: dict[str, float] = field(default_factory=dict)
    #: without a budget: keep every layer INT8 even when ``auto``'s model may lose more than a point on
    #: 1000+ held-out images (by default the most sensitive blocks then stay float, see
    #: :func:`ocrquant.tuning.budget.escalate_to_budget`)
    keep_all_int8: bool = False
    #: ``--input-shape N C H W``: a fixed model input for every task (see api.input_shape_options)
    input_shape: tuple[int, int, int, int] | None = None
    #: images per model call in evaluation (``--batch-size``; rec crops of one width are stacked)
    batch_size: int = 1
    #: images per calibration run (``--calib-batch-size``; 1 for a model whose batch is fixed to 1)
    calib_batch_size: int = 8
    #: ``--int8 TASK=PATH``: an INT8 model already made (by ``ocrquant quantize`` or another tool) to
    #: score against the float model instead of quantizing; that task needs no calibration data
    int8: dict[str, Path] = field(default_factory=dict)
    #: where ``auto``'s trials run (``--workers N``, ``--ray ADDRESS``); the models are the same either way
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)


def default_calibration_root() -> Path:
    """A synthetic calibration set (own seed, never the sample's test images), made once and cached."""

    root = cache_home() / "synth-calib-seed7"
    if not manifest_intact(root):  # a damaged set would otherwise break every later run
        if root.exists():
            log.warning("%s: damaged or unverified; generating it again", root)
        generate(root, n_det=12, n_rec=64, seed=7, overwrite=True)
        write_manifest(root)
    return root


def resolve_paths(cfg: RunConfig) -> RunConfig:
    """Fill unset data/calibration paths with the embedded defaults."""
    if not cfg.data:
        cfg.data = {"det": sample_root() / "det", "rec": sample_root() / "rec"}
    if not cfg.calib_data and not all(t in cfg.int8 for t in cfg.tasks if t != "e2e"):
        if cfg.data.get("det") != sample_root() / "det" and cfg.data.get("rec") != sample_root() / "rec":
            raise OcrQuantError("--calib-data is required with --data (never calibrate on the test set)")
        calib = default_calibration_root()
        cfg.calib_data = {"det": calib / "det", "rec": calib / "rec"}
    return cfg


def _eval_cached(
    task_obj: Any, model: Path, name: str, dataset: Any, out: Path, cfg: RunConfig
) -> EvalResult:
    runner = create_runner(model, "onnxruntime", RuntimeOptions(threads=cfg.threads))
    result = evaluate(
        task_obj,
        runner,
        dataset,
        model_name=name,
        batch_size=cfg.batch_size,
        limit=cfg.limit,
        output=out,
        extra_settings={"model_path": str(model)},
    )
    return result


@dataclass
class Quantized:
    """What the quantize step of one task leaves behind for the steps after it."""

    model: ResolvedModel
    task: Any
    int8_path: Path
    test_set: Any


def _task_model(task_name: str, cfg: RunConfig) -> tuple[str, ResolvedModel, str]:
    """The task's model spec (``--model`` or the default), the model, and the task it runs: a model of
    a task variant (det-craft for ``--task det``) brings its own task."""
    spec = cfg.models.get(task_name, DEFAULT_MODELS.get(task_name))
    if spec is None:
        raise OcrQuantError(f"no model given for task {task_name}")
    model = resolve_model(spec)
    if model.task and model.task != task_name and model.task.startswith(f"{task_name}-"):
        task_name = model.task
    return spec, model, task_name


def given_int8(task_name: str, path: Path, cfg: RunConfig) -> Quantized:
    """The INT8 model ``--int8`` names for the task, checked (a readable, quantized ONNX file: the
    model loader names a missing or broken one), with the float model and test set it is scored
    against; nothing is written."""

    if cfg.input_shape is not None:
        raise OcrQuantError("--int8 takes the model as it is; --input-shape cannot pin it (pin it first)")
    _, model, task_name = _task_model(task_name, cfg)
    if not is_quantized(path):
        raise OcrQuantError("--int8: the model has no quantization nodes (a float model?)", path)
    task_obj = build_task(task_name, model, {})
    test_set = open_dataset(cfg.data[DATA_KIND.get(task_name, "det")], task_name)
    (cfg.out_dir / task_name).mkdir(parents=True, exist_ok=True)
    return Quantized(model, task_obj, path, test_set)


def quantize_for_task(task_name: str, cfg: RunConfig) -> Quantized:
    """Quantize the task's model with its calibration set (skipped when the run directory has it, or
    when ``--int8`` gives the INT8 model: :func:`given_int8`)."""

    given = cfg.int8.get(task_name, cfg.int8.get(task_name.split("-")[0]))
    if given is not None:
        return given_int8(task_name, given, cfg)
    _, model, task_name = _task_model(task_name, cfg)
    out = cfg.out_dir / task_name
    # every check before anything is written: the pinned shape against the model, the sizes against
    # the task, the data folders
    pinned = _pinned_proto(model, cfg.input_shape) if cfg.input_shape is not None else None
    shape_options = input_shape_options(task_name, cfg.input_shape)
    task_obj = build_task(task_name, model, shape_options)
    kind = DATA_KIND.get(task_name, "det")
    test_set = open_dataset(cfg.data[kind], task_name)
    calib_set = open_dataset(cfg.calib_data[kind], task_name)
    if test_set.root.resolve() == calib_set.root.resolve():
        raise OcrQuantError("calibration and test data are the same directory", calib_set.root)
    out.mkdir(parents=True, exist_ok=True)
    if pinned is not None:
        model = _write_pinned(model, task_name, pinned, out)
        # the pinned file's static size decides the preprocessing (rec squeezes long crops into the
        # fixed width instead of widening the batch, which the pinned model would refuse)
        task_obj = build_task(task_name, model, shape_options)
    int8_path = out / f"{model.name}.int8.onnx"
    qcfg = QuantConfig(
        target=cfg.target, calib_size=cfg.calib_size, batch_size=cfg.calib_batch_size, **cfg.extra_quant
    )
    if shape_options:
        qcfg.task_options = {**(qcfg.task_options or {}), **shape_options}
    if cfg.method:
        qcfg.method = cfg.method
    budget = cfg.max_drop.get(task_name, cfg.max_drop.get(task_name.split("-")[0]))
    qkey = {
        "model": str(model.path),
        "model_sha256": file_fingerprint(model.path),
        "calib": str(calib_set.root.resolve()),
        "config": _plain(qcfg),
    }
    if budget is not None:  # absent otherwise, so run directories from before the option still resume
        qkey["max_drop"] = budget
    if cfg.keep_all_int8:
        qkey["keep_all_int8"] = True
    key_file = out / "quantize.key.json"
    if not _quantized_already(int8_path, key_file, qkey):
        log.info("[%s] quantizing %s (up to %d calibration images)", task_name, model.name, cfg.calib_size)

        with executor_for(cfg.executor) as executor:
            if budget is None:
                result = quantize(model, task_name, calib_set, int8_path, qcfg, executor)
                _, search = escalate_to_budget(
                    model,
                    task_name,
                    calib_set,
                    result,
                    qcfg,
                    not cfg.keep_all_int8,
                    cfg.threads,
                    executor=executor,
                )
            else:
                _, search = quantize_with_budget(
                    model,
                    task_name,
                    calib_set,
                    None,
                    int8_path,
                    qcfg,
                    BudgetConfig(budget, threads=cfg.threads),
                    executor=executor,
                )
        if search is not None:
            log.info("[%s] %s", task_name, search.summary())
        write_json_atomic(key_file, {"key": qkey, "int8_sha256": sha256_file(int8_path)})
    if cfg.input_shape is None:  # a pinned model would not take the pipeline's own image sizes
        _publish_int8(model, int8_path)
    return Quantized(model, task_obj, int8_path, test_set)


def _pinned_proto(model: ResolvedModel, shape: tuple[int, int, int, int]) -> Any:
    """``--input-shape``: the float model with its input pinned (in memory; None when the model
    already declares that shape), so that the float model scored, the one quantized and the INT8
    model written all declare the static shape a fixed-shape compiler takes."""

    loaded = onnx.load(str(model.path))
    pinned = pin_input_shape(loaded, shape, model.path)
    return None if declared_input_shape(pinned) == declared_input_shape(loaded) else pinned


def _write_pinned(model: ResolvedModel, task_name: str, pinned: Any, out: Path) -> ResolvedModel:
    """The pinned model as ``<name>.fixed.onnx`` in the run folder, with a sidecar recording the task
    and the zoo preset (whatever opens the file by path later reads them); the framework source
    (``--framework paddle``) stays the original."""

    path = out / f"{model.name}.fixed.onnx"
    write_bytes_atomic(path, pinned.SerializeToString())
    side = {"task": task_name, "settings": {"task_config": model.preset}, "pinned_from": str(model.path)}
    write_sidecar(path, side)
    return replace(model, path=path, input_shape=declared_input_shape(pinned))


def _quantized_already(int8_path: Path, key_file: Path, qkey: dict[str, Any]) -> bool:
    """True when the run folder holds the INT8 model of exactly this quantize step: same float model
    bytes, calibration folder and settings, and the INT8 file is the one written then (a model
    replaced or damaged since is quantized again)."""
    if not (int8_path.is_file() and key_file.is_file()):
        return False
    try:
        stored = json.loads(key_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(stored, dict) or stored.get("key") != qkey:
        log.info("quantizing again: %s records another model, calibration set or setting", key_file)
        return False
    return stored.get("int8_sha256") == sha256_file(int8_path)


def _publish_int8(model: ResolvedModel, int8_path: Path) -> None:
    """Zoo models: also cache the INT8 model where ``ocrquant ocr --precision int8`` looks for it."""

    if model.name in ZOO:
        target = int8_model_path(model.name)
        write_bytes_atomic(target, int8_path.read_bytes())
        write_sidecar(target, {"quantized_by": "ocrquant run", "source": str(int8_path)})
        log.info("INT8 %s cached as %s", model.name, target)


def run_task(task_name: str, cfg: RunConfig) -> tuple[ReportRow, TaskFigures | None]:
    """The whole chain for one task; returns its report row and the report's pictures of it."""
    q = quantize_for_task(task_name, cfg)
    model, task_obj, int8_path, test_set = q.model, q.task, q.int8_path, q.test_set
    task_name = task_obj.name
    out = cfg.out_dir / task_name
    log.info("[%s] evaluating float and INT8 on %s", task_name, test_set.root)
    f_res = _eval_cached(task_obj, model.path, model.name, test_set, out / "eval_float.json", cfg)
    q_res = _eval_cached(task_obj, int8_path, model.name + "-int8", test_set, out / "eval_int8.json", cfg)
    fw_metric = None
    if cfg.framework_backend:
        fw_runner = create_runner(
            model.path_for(cfg.framework_backend), cfg.framework_backend, RuntimeOptions(threads=cfg.threads)
        )
        fw_res = evaluate(
            task_obj,
            fw_runner,
            test_set,
            model_name=model.name + f"-{cfg.framework_backend}",
            batch_size=cfg.batch_size,
            limit=cfg.limit,
            output=out / f"eval_{cfg.framework_backend}.json",
        )
        fw_metric = fw_res.primary
    lat = interleaved_latency(
        {"float": model.path, "int8": int8_path},
        preprocessed_inputs(task_obj, test_set, cfg.latency_inputs),
        threads=cfg.threads,
    )
    sidecar = read_sidecar(int8_path)
    row = ReportRow.from_evals(
        model.name,
        task_name,
        f_res,
        q_res,
        (lat["float"].median_ms, lat["int8"].median_ms),
        (model.path.stat().st_size / 2**20, int8_path.stat().st_size / 2**20),
        {
            "nodes quantized/float per op type": _node_counts(sidecar.get("node_counts", {})),
            "quantization": _quant_summary(sidecar.get("settings", {}))
            if sidecar.get("settings")
            else "given with --int8 (no ocrquant sidecar)",
            # what auto picked and tried, kept or could not try (an extra missing): which recipe ran
            **({"auto search": search_summary(ms)} if (ms := sidecar.get("method_search")) else {}),
            # what calibration actually read (a small set gives fewer than --calib-size)
            "calibration images": str(sidecar.get("settings", {}).get("calib_size", "?")),
            "int8 model": str(int8_path),
        },
        task_obj=task_obj,
        framework_metric=fw_metric,
        framework=model.framework,
        float_nodes=list(sidecar.get("float_nodes", [])),
    )
    return row, task_figures(task_obj, model.path, int8_path, test_set, (f_res, q_res), out, cfg.threads)


def run_task_ncnn(task_name: str, cfg: RunConfig) -> tuple[ReportRow, TaskFigures | None]:
    """One task on ncnn (``--backend ncnn``): float and INT8 ncnn models from the same calibration
    data, scored on the same test set, with onnxruntime's float figure beside them
    (:func:`ocrquant.report.ncnn.ncnn_report`)."""

    spec, _, task_name = _task_model(task_name, cfg)
    kind = DATA_KIND.get(task_name, "det")
    row = ncnn_report(
        spec,
        task_name,
        cfg.data[kind],
        cfg.calib_data[kind],
        NcnnReportConfig(
            out_dir=cfg.out_dir / task_name,
            calib_size=cfg.calib_size,
            limit=cfg.limit,
            threads=cfg.threads,
            latency_images=cfg.latency_inputs,
        ),
        NcnnQuantConfig(method=cfg.method or DEFAULT_METHOD, max_float=0),
    )
    return row, None


TASK_RUNNERS = {"onnxruntime": run_task, "ncnn": run_task_ncnn}


def run(cfg: RunConfig) -> list[ReportRow]:
    """Run every task of ``cfg`` and write report.md / report.json into ``cfg.out_dir``."""
    if cfg.backend not in TASK_RUNNERS:
        raise OcrQuantError(f"unknown backend '{cfg.backend}' for run (known: {', '.join(TASK_RUNNERS)})")
    if cfg.backend != "onnxruntime" and ("e2e" in cfg.tasks or cfg.framework_backend):
        raise OcrQuantError(f"--backend {cfg.backend} runs det / cls / rec only (no e2e, no --framework)")
    cfg = resolve_paths(cfg)
    done = [TASK_RUNNERS[cfg.backend](t, cfg) for t in cfg.tasks if t != "e2e"]
    rows = [row for row, _ in done]
    figures = {row.task: figs for row, figs in done if figs is not None}
    chain = run_e2e(cfg) if "e2e" in cfg.tasks else []
    settings = {
        "tasks": cfg.tasks,
        "data": {k: str(v) for k, v in cfg.data.items()},
        "calibration data": {k: str(v) for k, v in cfg.calib_data.items()},
        "calibration size (at most; each row says what was used)": cfg.calib_size,
        "method": cfg.method or "default",
        "backend": cfg.backend,
        "target": cfg.target,
        "threads": cfg.threads,
        "limit": cfg.limit,
        "max drop (points)": cfg.max_drop or None,
        "given INT8 models": {k: str(v) for k, v in cfg.int8.items()} or None,
    }
    write_json_atomic(
        cfg.out_dir / "report.json",
        {"settings": settings, "rows": [r.to_json() for r in rows], "e2e_chain": chain},
    )
    write_text_atomic(cfg.out_dir / "report.md", render_markdown(rows, settings, chain))
    speed = speed_size_figure(rows, cfg.out_dir / "speed_size.png")
    write_text_atomic(cfg.out_dir / "report.html", render_html(rows, settings, chain, figures, speed))
    return rows


def run_e2e(cfg: RunConfig) -> list[dict[str, Any]]:
    """Chain rows (all FP32, each stage INT8 alone, all INT8) on the det test set, end-to-end metric."""

    q = {t: quantize_for_task(t, cfg) for t in ("det", "cls", "rec")}
    dataset = open_dataset(cfg.data["det"], "det")
    lexicon = "all" if default_vocab_dir(dataset.root) else None
    models = ChainModels(
        q["det"].model.path, q["det"].int8_path, q["cls"].model.path, q["cls"].int8_path,
        q["rec"].model.path, q["rec"].int8_path,
    )  # fmt: skip
    return chain_report(
        models, dataset, E2EScoring(lexicon=lexicon, limit=cfg.limit), output_dir=cfg.out_dir / "e2e",
        runtime=RuntimeOptions(threads=cfg.threads),
    )  # fmt: skip


def _plain(obj: Any) -> Any:
    try:
        return json.loads(json.dumps(asdict(obj), default=str))
    except TypeError:
        return str(obj)


def _node_counts(counts: dict[str, dict[str, int]]) -> str:
    return ", ".join(f"{op} {c.get('quantized', 0)}/{c.get('float', 0)}" for op, c in sorted(counts.items()))


def _quant_summary(settings: dict[str, Any]) -> str:
    target = settings.get("target", {})
    name = target.get("name", target) if isinstance(target, dict) else target
    keys = ("method", "algorithms", "calib_size", "calib_data", "per_channel", "dtype_overrides", "exclude")
    parts = [f"target {name}"] + [f"{k} {settings[k]}" for k in keys if settings.get(k) not in (None, [], {})]
    return "; ".join(parts)
