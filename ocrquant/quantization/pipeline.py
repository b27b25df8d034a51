"""The quantization workflow: prepare -> float algorithms -> calibrate -> ranges -> plan algorithms ->
write QDQ -> QDQ algorithms -> sidecar. Each step is a library function; this module only sequences."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ocrquant.data import Dataset, Sample, readable_images, sample_calibration
from ocrquant.data.calibration import extend_calibration
from ocrquant.errors import OcrQuantError
from ocrquant.fileio import atomic_path, float_reference_path, scratch_dir, sha256_file, write_sidecar
from ocrquant.quantization.algorithms import AlgorithmContext, create_algorithm
from ocrquant.quantization.calibration import (
    QSpec,
    cache_key,
    collect_statistics,
    create_calibrator,
    load_cached,
    save_cached,
)
from ocrquant.quantization.config import QuantConfig, QuantResult, resolve_method
from ocrquant.quantization.graph import float_tensors, is_quantized, load_model
from ocrquant.quantization.prepare import prepare_model
from ocrquant.quantization.qdq import (
    QuantPlan,
    apply_qdq_passes,
    check_names,
    ensure_node_names,
    write_qdq_model,
)
from ocrquant.quantization.targets import cpu_has_vnni, get_target, host_profile
from ocrquant.tasks import Task
from ocrquant.zoo.fetch import cache_home
from ocrquant.zoo.resolve import ResolvedModel
from ocrquant.zoo.task import build_task, infer_task

log = logging.getLogger("ocrquant")


def algorithm_names(cfg: QuantConfig, task_name: str) -> list[str]:
    """The accuracy algorithms a run applies: the config's list, else the host profile's for the task,
    then ``extra_algorithms``."""
    if cfg.algorithms is not None:
        names = list(cfg.algorithms)
    else:
        profile = get_target(cfg.target)  # the host adjustment changes weight types, not algorithms
        names = list(profile.task_algorithms.get(task_name, profile.default_algorithms))
    return names + [n for n in cfg.extra_algorithms if n not in names]


def check_output(output: str | Path, model_path: str | Path) -> Path:
    """``output`` as a path, or a one-line error if it cannot be the INT8 model's: not ``.onnx`` (the
    sidecar and float reference are named from its stem), or the input model itself. Checked before
    any work, so a refused command writes nothing."""
    output = Path(output)
    if output.suffix.lower() != ".onnx":
        raise OcrQuantError("output must be an .onnx file", output)
    if output.exists() and output.resolve() == Path(model_path).resolve():
        raise OcrQuantError("output would overwrite the input model", output)
    return output


def calibration_batches(
    task: Task, samples: list[Sample], batch_size: int
) -> Callable[[], Iterator[np.ndarray]]:
    """A factory of fresh batch iterators: each image preprocessed alone (as at inference), consecutive
    inputs of equal shape stacked up to ``batch_size`` (det sizes and rec widths vary)."""
    batch_size = max(1, batch_size)

    def gen() -> Iterator[np.ndarray]:
        pending: list[np.ndarray] = []
        for _, image in readable_images(samples):
            x = task.preprocess([image]).inputs
            if pending and (pending[0].shape != x.shape or len(pending) >= batch_size):
                yield np.concatenate(pending)
                pending = []
            pending.append(x)
        if pending:
            yield np.concatenate(pending)

    return gen


def calibration_batch_size(wanted: int, task: Task, model: Any) -> int:
    """``--batch-size`` where the task batches images of one size and the model takes any batch; a
    model with a fixed batch of 1 gets 1 (a fixed batch above 1 cannot be calibrated image by image)."""
    batch = (model.input_shape or [None])[0]
    if isinstance(batch, int) and batch > 1:
        raise OcrQuantError(
            f"the model's input has a fixed batch of {batch}; convert it with batch 1 or -1 (dynamic)",
            model.path,
        )
    if isinstance(batch, int) and batch == 1:
        return 1
    return wanted if task.batchable() else 1


def default_cache_dir() -> Path:

    return cache_home() / "calib"


def float_model_task(resolved: ResolvedModel, task_name: str | None, config: QuantConfig) -> Task:
    """The task ``resolved`` is quantized for; refuses another task's model and an INT8 one (before
    any search or calibration starts)."""
    task = build_task(infer_task(resolved, task_name), resolved, config.task_options)
    if is_quantized(load_model(resolved.path)):
        raise OcrQuantError(
            "model is already quantized (has QuantizeLinear/DequantizeLinear or QLinear* "
            "nodes); pass the float model",
            resolved.path,
        )
    return task


def sample_ids(samples: list[Sample]) -> list[str]:
    """The calibration pick as it keys caches: each image's resolved path, ``:180`` when rotated."""
    return [str(Path(x.image_path).resolve()) + (":180" if x.rotate180 else "") for x in samples]


@dataclass(frozen=True)
class FloatStage:
    """The float model calibration sees: the prepared model (``prepare_model``) after the float-stage
    algorithms (HS-CLE, act_cle), with their reports and what they hand the later stages.

    It depends only on the model, the host profile, the float-stage algorithms and their options and
    the calibration pick (``key``), not on the range method or the later algorithms, so a search makes
    it once and gives it to every trial (:func:`quantize_recipe`'s ``float_stage``). Picklable: it
    travels with a trial to a worker process or a Ray node. Measured on 2 cores (the sidecar's
    ``timings.prepare_s`` of each of ``auto``'s recipe runs, made here / given): PP-OCRv3 det (act_cle)
    3.3 / 0.0 s, PP-OCRv3 rec (HS-CLE) 5.3 / 0.05 s; ``auto``'s models are the same bytes either way.
    """

    key: str
    model: bytes  # the serialized ModelProto, node names ensured
    sha256: str  # of ``model``: keys the calibration cache, identifies the float reference
    prepare: dict[str, Any]
    reports: dict[str, Any]  # float-stage algorithm -> its report
    keep_float: dict[str, str]  # AlgorithmContext.keep_float after the stage
    extras: dict[str, Any]  # AlgorithmContext.extras after the stage (hs_cle's per-channel record)


@dataclass
class _Recipe:
    """One recipe call resolved: what every stage reads."""

    resolved: ResolvedModel
    task: Task
    cfg: QuantConfig
    profile: Any  # TargetProfile, adjusted to the host
    fuse_hardswish: bool
    algorithms: list[Any]
    dataset: Dataset
    samples: list[Sample]
    batch_size: int

    def batches(self) -> Callable[[], Iterator[np.ndarray]]:
        return calibration_batches(self.task, self.samples, self.batch_size)

    def float_stage_key(self) -> str:
        """What the float stage depends on (:class:`FloatStage`), hashed."""
        names = [a.name for a in self.algorithms if a.stage == "float"]
        record = {
            "model_sha256": sha256_file(self.resolved.path),
            "profile": asdict(self.profile),
            "fuse_hardswish": self.fuse_hardswish,
            "algorithms": [[n, self.cfg.algorithm_options.get(n, {})] for n in names],
            "samples": sample_ids(self.samples),
            "batch_size": self.batch_size,
        }
        return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def _recipe_for(
    resolved: ResolvedModel, task_name: str | None, dataset: Dataset, cfg: QuantConfig
) -> _Recipe:
    task = float_model_task(resolved, task_name, cfg)
    profile = host_profile(get_target(cfg.target)).for_task(task.name)
    fuse_hardswish = profile.fuse_hardswish if cfg.fuse_hardswish is None else cfg.fuse_hardswish
    method, _ = resolve_method(cfg, task.name)
    if method == "auto":
        raise ValueError("method 'auto' is a search over recipes: call ocrquant.tuning.quantize")
    algorithms = [
        create_algorithm(n, **cfg.algorithm_options.get(n, {})) for n in algorithm_names(cfg, task.name)
    ]
    if not dataset.samples:
        raise OcrQuantError(f"calibration set has no {task.name} samples", dataset.root)
    if cfg.calib_size > len(dataset.samples):
        log.warning(
            "calibration: --calib-size %d but %s has only %d samples; using %d",
            cfg.calib_size,
            dataset.root,
            len(dataset.samples),
            len(dataset.samples),
        )
    samples = sample_calibration(dataset, min(cfg.calib_size, len(dataset.samples)), cfg.seed)
    batch_size = calibration_batch_size(cfg.batch_size, task, resolved)
    return _Recipe(resolved, task, cfg, profile, fuse_hardswish, algorithms, dataset, samples, batch_size)


def _make_float_stage(recipe: _Recipe, key: str) -> FloatStage:
    with scratch_dir("float-stage") as tmp:
        work = Path(tmp)
        prepared = work / "prepared.onnx"
        prep_report = prepare_model(
            recipe.resolved.path,
            prepared,
            fuse_hardswish=recipe.fuse_hardswish,
            rewrites=recipe.profile.prepare_rewrites,
        )
        model = onnx.load(str(prepared))
        ensure_node_names(model)  # algorithms and the plan address nodes by name
        ctx = AlgorithmContext(
            model=model,
            profile=recipe.profile,
            batches=recipe.batches(),
            work_dir=work,
            progress=recipe.cfg.progress,
        )
        reports = {a.name: a.apply(ctx) for a in recipe.algorithms if a.stage == "float"}
    body = ctx.model.SerializeToString()
    return FloatStage(
        key, body, hashlib.sha256(body).hexdigest(), asdict(prep_report), reports, ctx.keep_float, ctx.extras
    )


def prepare_float_stage(
    model: ResolvedModel, task_name: str | None, calib: Dataset, config: QuantConfig
) -> FloatStage:
    """The float stage of ``quantize_recipe(model, task_name, calib, ..., config)``, made once for
    trials that share it (:class:`FloatStage`)."""
    recipe = _recipe_for(model, task_name, calib, config)
    return _make_float_stage(recipe, recipe.float_stage_key())


def quantize_recipe(
    model: ResolvedModel,
    task_name: str | None,
    calib: Dataset,
    output: str | Path,
    config: QuantConfig | None = None,
    float_stage: FloatStage | None = None,
) -> QuantResult:
    """Quantize a float OCR model with one recipe (range method, algorithms) and calibration images
    from ``calib``; write ``output`` (QDQ ONNX) and ``<output stem>.quant.json``. ``model`` and
    ``calib`` come resolved and opened (:func:`ocrquant.zoo.resolve.resolve_model`,
    :func:`ocrquant.data.open_dataset`, once, by the CLI or API). ``method="auto"`` is a search over
    recipes, which the tuning layer runs (:func:`ocrquant.tuning.quantize`). ``float_stage``: this
    recipe's float stage made beforehand (:func:`prepare_float_stage`); used only where its key is this
    recipe's, else made here."""
    cfg = config or QuantConfig()
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    recipe = _recipe_for(model, task_name, calib, cfg)
    resolved, task, profile, algorithms = recipe.resolved, recipe.task, recipe.profile, recipe.algorithms
    dataset, samples, batch_size = recipe.dataset, recipe.samples, recipe.batch_size
    task_name = task.name
    method, method_options = resolve_method(cfg, task_name)
    calibrator = create_calibrator(method, **method_options)
    output = check_output(output, resolved.path)
    batches = recipe.batches()
    reports: dict[str, Any] = {}

    t = time.perf_counter()
    stage_key = recipe.float_stage_key()
    stage = float_stage if float_stage is not None and float_stage.key == stage_key else None
    stage = stage or _make_float_stage(recipe, stage_key)
    reports.update(stage.reports)
    with scratch_dir("quant") as tmp:
        work = Path(tmp)
        ctx = AlgorithmContext(
            model=onnx.load_from_string(stage.model),
            profile=profile,
            batches=batches,
            work_dir=work,
            progress=cfg.progress,
            keep_float=dict(stage.keep_float),
            extras=dict(stage.extras),
            learning_batches=lambda n: calibration_batches(
                task, extend_calibration(dataset, samples, n, cfg.seed, cfg.holdout), batch_size
            ),
        )
        # after the float-stage algorithms: a budget search pins the nodes they add (HS-CLE's gates)
        check_names(ctx.model, list(cfg.exclude), list(cfg.dtype_overrides), resolved.path)
        float_path = work / "float.onnx"
        float_path.write_bytes(stage.model)
        float_sha256 = stage.sha256  # keys the calibration cache, identifies the reference
        timings["prepare_s"] = time.perf_counter() - t

        t = time.perf_counter()
        key = cache_key(
            model_sha256=float_sha256,
            task=task_name,
            task_config=asdict(task.config),
            samples=sample_ids(samples),
            batch_size=batch_size,
            bins=cfg.bins,
        )
        cache_dir = (cfg.cache_dir or default_cache_dir()) if cfg.use_cache else None
        stats = load_cached(cache_dir, key)
        cache_hit = stats is not None
        if stats is None:
            stats = collect_statistics(
                ctx.model, float_tensors(ctx.model), batches, bins=cfg.bins, progress=cfg.progress
            )
            save_cached(cache_dir, key, stats)
        timings["calibration_s"] = time.perf_counter() - t

        t = time.perf_counter()
        specs = {
            name: QSpec(cfg.dtype_overrides.get(name, profile.activation_dtype), profile.activation_symmetric)
            for name in stats.tensors
        }
        ranges = calibrator.compute_ranges(stats, specs)
        plan = QuantPlan(
            profile=profile,
            ranges=ranges,
            per_channel=cfg.per_channel,
            exclude=list(cfg.exclude) + [n for n in ctx.keep_float if n not in cfg.exclude],
            dtype_overrides=dict(cfg.dtype_overrides),
            observed={n: (s.min, s.max) for n, s in stats.tensors.items()},
        )
        ctx.stats, ctx.plan = stats, plan
        for algo in (a for a in algorithms if a.stage == "plan"):
            reports[algo.name] = algo.apply(ctx)
        timings["ranges_s"] = time.perf_counter() - t

        t = time.perf_counter()
        staged = work / "quantized.onnx"
        body = write_qdq_model(ctx.model, ctx.plan, staged)
        ctx.qdq_path = staged
        qdq_algorithms = [a for a in algorithms if a.stage == "qdq"]
        if cfg.qdq_start is not None:
            start = cfg.qdq_start
            if tuple(a.name for a in qdq_algorithms[: len(start.applied)]) != start.applied:
                raise OcrQuantError(
                    f"cannot continue from a model with {list(start.applied)} applied: this run's "
                    f"qdq-stage algorithms are {[a.name for a in qdq_algorithms]}",
                    start.path,
                )
            shutil.copyfile(start.path, staged)
            reports.update({n: start.reports.get(n) for n in start.applied})
            qdq_algorithms = qdq_algorithms[len(start.applied) :]
        for algo in qdq_algorithms:
            reports[algo.name] = algo.apply(ctx)
        if cfg.save_prepass is not None:
            shutil.copyfile(staged, cfg.save_prepass)
        if cfg.graph_passes:
            apply_qdq_passes(staged, plan.profile, body)
        with atomic_path(float_reference_path(output)) as ref_tmp:  # the reference of analysis
            shutil.copyfile(float_path, ref_tmp)
        with atomic_path(output) as out_tmp:
            shutil.copyfile(staged, out_tmp)
        timings["write_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start

    sidecar = write_sidecar(
        output,
        {
            "model": str(resolved.path),
            "model_name": resolved.name,
            "output": str(output),
            "float_reference_sha256": float_sha256,  # of <stem>.float.onnx (fileio.float_reference_path)
            "task": task_name,
            "settings": {
                "target": asdict(plan.profile),  # as adjusted to the host and by algorithms
                "host_cpu_vnni": cpu_has_vnni(),
                "method": method,
                "method_options": method_options,
                "per_channel": profile.per_channel if cfg.per_channel is None else cfg.per_channel,
                "exclude": cfg.exclude,
                "algorithms": [a.name for a in algorithms],
                "fuse_hardswish": recipe.fuse_hardswish,
                "algorithm_options": cfg.algorithm_options,
                "dtype_overrides": cfg.dtype_overrides,
                "calib_size": len(samples),
                "holdout_images": len(cfg.holdout),
                "batch_size": batch_size,
                "seed": cfg.seed,
                "bins": cfg.bins,
                "task_config": asdict(task.config),
                "calib_data": str(dataset.root),
            },
            "prepare": stage.prepare,
            "algorithms": reports,
            "timings": timings,
            "calibration_cache_hit": cache_hit,
            **body,
        },
    )
    return QuantResult(
        output,
        sidecar,
        task_name,
        profile.name,
        method,
        len(samples),
        body["node_counts"],
        body["float_nodes"],
        timings,
        reports,
        cache_hit,
    )
