"""``--method auto``: choose the range method by the task metric on held-out calibration-side data.

Which clipping rule suits a model differs (det likes a high percentile, cls the MSE-optimal clip), and
choosing it on the test set would be tuning to the test set. So the candidates are compared on a
validation split of the *calibration directory* (images the calibration pick did not use); the
statistics are collected once (calibration cache) and only the ranges differ between candidates.

The comparison is by *fidelity*: the task metric of the candidate scored against the float model's
own predictions (``ocrquant.evaluation.fidelity``), not against the labels. Label accuracy on a few
hundred crops moves by +-2 points between candidates that differ in a handful of crops, half of them
crops the float model got wrong; fidelity counts every change quantization makes, needs no labels,
and so can use every spare calibration-side image. The label metric is still recorded per candidate.
Detection is the exception (``DetMetric.rank_by_output_loss``): its 60 held-out images hold too few
boxes for either box figure, so its candidates are ranked by the held-out output loss (the float
probability map fitted pixel by pixel), the reasons given there.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ocrquant.data import Dataset
from ocrquant.data.calibration import image_id
from ocrquant.data.split import split_calibration
from ocrquant.errors import OcrQuantError
from ocrquant.evaluation import evaluate
from ocrquant.evaluation.evaluate import EvalResult, fidelity_samples, preprocessed_inputs
from ocrquant.evaluation.significance import paired_delta_interval, paired_mean_interval
from ocrquant.fileio import copy_quantized, read_sidecar, scratch_dir, sidecar_path, write_sidecar
from ocrquant.quantization.algorithms.base import ALGORITHMS, create_algorithm
from ocrquant.quantization.algorithms.distill import float_logits, output_losses
from ocrquant.quantization.config import QdqStart, QuantConfig, QuantResult, resolve_method
from ocrquant.quantization.pipeline import (
    FloatStage,
    algorithm_names,
    check_output,
    float_model_task,
    prepare_float_stage,
    quantize_recipe,
)
from ocrquant.quantization.targets import get_target
from ocrquant.runtime import RuntimeOptions, create_runner
from ocrquant.tasks import Task
from ocrquant.tuning.executor import Executor, InProcessExecutor, Trial
from ocrquant.zoo.resolve import ResolvedModel
from ocrquant.zoo.task import build_task, infer_task

log = logging.getLogger("ocrquant")

#: (method, options) tried by ``auto``, in order of preference on ties
CANDIDATES: list[tuple[str, dict[str, Any]]] = [
    ("min_max", {}),
    ("percentile", {"percentile": 99.99}),
    ("percentile", {"percentile": 99.999}),
    ("mse", {}),
]

#: validation images per task (det images are costlier than word crops; a word crop costs ~10 ms)
VAL_SIZE = {"det": 60, "cls": 2000, "rec": 2000}


def calib_size_leaving_validation(calib_size: int, available: int, val_size: int) -> int:
    """The calibration size when validation images come from the same directory: at most
    ``calib_size``, leaving ``val_size`` images (but never more than half of them) to validate on.
    det_train's 200 images: 140 calibrate, 60 validate."""
    return min(calib_size, max(1, available - min(val_size, available // 2)))


#: what candidates are ranked by, per the task metric's ``selection``
SELECTION_KEYS = {"fidelity": "val_fidelity", "metric": "val_metric"}
#: the criterion of a task metric with ``rank_by_output_loss``: mean held-out output loss, lower is better
LOSS_KEY = "val_output_loss"


def _merit(scores: dict[str, float], key: str) -> float:
    """``scores[key]`` oriented so that higher is better (the output loss is a loss)."""
    return -scores[key] if key == LOSS_KEY else scores[key]


def candidate_tag(method: str, options: dict[str, Any]) -> str:
    """A range candidate's name (``percentile-99.99``): its scratch file, log lines and summary line."""
    return method + "".join(f"-{v}" for v in options.values())


@dataclass(frozen=True)
class CandidateSpec:
    """One range candidate of ``auto``: quantize ``model`` with ``config`` into ``output`` and
    evaluate it on ``validation``. Everything a worker needs, nothing it must look up; picklable, so
    the candidate runs the same in this process, a local worker or on a Ray node."""

    model: ResolvedModel
    task: Task
    calib: Dataset
    validation: Dataset
    output: str
    config: QuantConfig
    threads: int
    float_stage: FloatStage | None = None  # made once for all candidates (they share it)


def run_candidate(spec: CandidateSpec) -> EvalResult:
    """Quantize one candidate and evaluate it on the held-out samples (what a trial does)."""
    quantize_recipe(spec.model, spec.task.name, spec.calib, spec.output, spec.config, spec.float_stage)
    return evaluate_on(spec.task, spec.output, spec.validation, spec.threads)


def evaluate_on(task: Task, model_file: str | Path, dataset: Dataset, threads: int) -> EvalResult:
    runner = create_runner(Path(model_file), "onnxruntime", RuntimeOptions(threads=threads))
    return evaluate(task, runner, dataset, model_name=Path(model_file).stem, progress=False)


def quantize_auto(
    resolved: ResolvedModel,
    task_name: str | None,
    calib: Dataset,
    output: str | Path,
    config: QuantConfig,
    val_size: int | None = None,
    executor: Executor | None = None,
) -> tuple[QuantResult, list[dict[str, Any]]]:
    """Quantize once per candidate method, keep the one with the best validation metric.

    The validation split comes from ``calib_dataset`` minus the calibration pick (same seed), so the
    test set is never looked at. Returns the chosen result and the table of candidates, which is also
    written into the sidecar under ``method_search``. The range candidates are independent trials and
    run on ``executor`` (default: one after another in this process); the algorithm trials that
    follow build on each other and run here.
    """
    task_name = infer_task(resolved, task_name)
    n_val = val_size or VAL_SIZE.get(task_name, 200)
    if len(calib.samples) <= 1:
        raise OcrQuantError(
            "--method auto needs a calibration set with images to spare for validation", calib.root
        )
    calib_size = calib_size_leaving_validation(config.calib_size, len(calib.samples), n_val)
    split = split_calibration(calib, calib_size, config.seed, n_val)
    val_set = Dataset(calib.root, calib.task, calib.format, split.validation)
    # algorithms that learn from more than the calibration pick (distill) must not see these
    holdout = sorted({image_id(s) for s in split.validation})
    task = build_task(task_name, resolved)
    output = Path(output)
    rows: list[dict[str, Any]] = []
    best: tuple[float, int] | None = None
    # Candidates are compared without the algorithms that edit the written model (bias correction:
    # minutes per model, and it corrects what any range method leaves); the chosen one gets them all.
    names = algorithm_names(config, task_name)
    for n in names:
        create_algorithm(n, **config.algorithm_options.get(n, {}))  # unknown names fail before any work
    search_names = [n for n in names if ALGORITHMS[n].stage != "qdq"]

    def _evaluate(model_file: str | Path) -> EvalResult:
        return evaluate_on(task, model_file, val_set, threads=2)

    reference = _evaluate(resolved.path)
    primary = reference.settings["primary_metric"]
    metric = task.new_metric()
    label_key, by_loss = SELECTION_KEYS[metric.selection], metric.rank_by_output_loss
    key = LOSS_KEY if by_loss else label_key

    per_sample: dict[str, list[dict[str, Any]]] = {}  # model file -> per-image figures of the task figure
    labelled: dict[str, list[dict[str, Any]]] = {}  # model file -> per-image label-metric figures
    losses: dict[str, Any] = {}  # model file -> per-image held-out output loss (rank_by_output_loss)

    def _validate(model_file: str | Path, res: EvalResult | None = None) -> dict[str, float]:
        res = res if res is not None else _evaluate(model_file)
        agreement = task.new_metric()
        agree_samples = fidelity_samples(agreement, res, reference)
        per_sample[str(model_file)] = agree_samples if label_key == "val_fidelity" else res.samples
        labelled[str(model_file)] = res.samples
        scores = {
            "val_fidelity": round(agreement.result()[primary], 6),
            "val_metric": round(res.primary, 6),
        }
        if by_loss:
            losses[str(model_file)] = held_out_loss(model_file)
            scores[LOSS_KEY] = round(float(losses[str(model_file)].mean()), 8)
        return scores

    held_out: dict[str, list[Any]] = {}  # held-out inputs and the float model's outputs, made once

    def held_out_loss(model_file: str | Path) -> Any:
        """Per-image output loss of ``model_file`` against the float model on the held-out images."""

        if not held_out:
            held_out["inputs"] = preprocessed_inputs(task, val_set, len(val_set.samples))
            held_out["targets"] = float_logits(onnx.load(resolved.path), held_out["inputs"])
        return output_losses(onnx.load(str(model_file)), held_out["inputs"], held_out["targets"])

    def _margin(row: dict[str, Any], against: dict[str, Any]) -> dict[str, float] | None:
        """Held-out bootstrap interval of ``row - against`` on the task figure (fidelity or labels)."""
        iv = paired_delta_interval(task.new_metric(), per_sample[against["file"]], per_sample[row["file"]])
        return None if iv is None else {"low": round(iv["low"], 6), "high": round(iv["high"], 6)}

    def _loss_margin(row: dict[str, Any], against: dict[str, Any]) -> dict[str, float] | None:
        """Held-out bootstrap interval of the mean output loss ``against - row`` (above 0: ``row``
        fits the float output better), oriented as :func:`_margin` so one warning reads both."""
        iv = paired_mean_interval(
            _loss_samples(losses[row["file"]]), _loss_samples(losses[against["file"]]), "loss"
        )
        return None if iv is None else {"low": round(iv["low"], 8), "high": round(iv["high"], 8)}

    # Candidates live in a scratch directory: an interrupted search leaves nothing beside the output.
    with scratch_dir("auto") as scratch:
        scratch = Path(scratch)
        runner = executor or InProcessExecutor()
        threads = runner.threads()
        candidates = []
        for method, options in CANDIDATES:
            cand = scratch / f"{output.stem}.{candidate_tag(method, options)}.onnx"
            cfg = replace(
                config,
                method=method,
                method_options=dict(options),
                calib_size=calib_size,
                holdout=holdout,
                algorithms=search_names,
                extra_algorithms=[],
                save_prepass=prepass(cand),
                progress=config.progress and runner.name == "in-process",
            )
            candidates.append((candidate_tag(method, options), cand, cfg))
        # the float stage (prepare, HS-CLE / act_cle) is the same for every recipe tried: made once
        t0 = time.perf_counter()
        stage = prepare_float_stage(
            resolved, task_name, calib, replace(candidates[0][2], progress=config.progress)
        )
        float_seconds = round(time.perf_counter() - t0, 1)
        trials = [
            Trial(tag, CandidateSpec(resolved, task, calib, val_set, str(cand), cfg, threads, stage))
            for tag, cand, cfg in candidates
        ]
        # the first candidate fills the calibration cache; the rest read it, side by side
        t0 = time.perf_counter()
        results = runner.map(run_candidate, trials[:1]) + runner.map(run_candidate, trials[1:])
        seconds = {
            "float_stage": float_seconds,
            "range_candidates": round(time.perf_counter() - t0, 1),
            "executor": runner.name,
        }
        for i, (trial, res) in enumerate(zip(trials, results, strict=True)):
            method, options = trial.spec.config.method, trial.spec.config.method_options
            scores = _validate(trial.spec.output, res)
            rows.append({"method": method, "options": options, **scores, "file": trial.spec.output})
            log.info("auto: %s %s -> validation %s", method, options, scores)
            if best is None or _merit(scores, key) > best[0]:
                best = (_merit(scores, key), i)
        assert best is not None
        chosen = rows[best[1]]
        for row in rows:
            if row is not chosen:
                row["vs_chosen_ci95"] = _margin(row, chosen)
                if by_loss:
                    row["vs_chosen_loss_ci95"] = _loss_margin(row, chosen)
        _warn_unresolved(rows, chosen, key, len(split.validation))
        final_cfg = replace(
            config,
            method=chosen["method"],
            method_options=chosen["options"],
            calib_size=calib_size,
            holdout=holdout,
        )
        if search_names != names:
            t0 = time.perf_counter()
            quantize_recipe(
                resolved,
                task_name,
                calib,
                chosen["file"],
                replace(
                    final_cfg, algorithms=names, extra_algorithms=[], save_prepass=prepass(chosen["file"])
                ),
                stage,
            )
            chosen["all_algorithms"] = _validate(chosen["file"])
            seconds["qdq_algorithms"] = round(time.perf_counter() - t0, 1)
        base_scores = chosen.get("all_algorithms", chosen)
        # The held-out figure the choice does not rank by (labels when ranking by fidelity, fidelity
        # when ranking by labels): it may not fall either.
        other = "val_metric" if label_key == "val_fidelity" else "val_fidelity"
        # Algorithms that help some models and hurt others: kept where the held-out criterion rises
        # and the other held-out figure does not fall. The criterion alone admitted noise: on rec,
        # distill raised fidelity by 3 crops in 2000 while label accuracy fell 0.55 pt, and the test
        # set lost 0.48 pt with it (the sidecar's ``trials``, ``ocrquant quantize -m ppocrv3-rec``).
        # A task ranked by its output loss (det) judges them by that loss instead (keep_learned, below).
        profile = get_target(config.target)
        validated = profile.task_validated_algorithms.get(task_name, profile.validated_algorithms)
        extras = [a for a in validated if a not in names and config.algorithms is None]
        for extra in extras:
            if missing := ALGORITHMS[extra].missing():
                # an optional algorithm whose extra is not installed: said, recorded, not fatal
                log.warning("auto: %s not tried (needs %s)", extra, ", ".join(missing))
                rows.append({"method": chosen["method"], "options": chosen["options"], "algorithm": extra,
                             "skipped": f"needs {', '.join(missing)}"})  # fmt: skip
                continue
            picked = candidate_tag(chosen["method"], chosen["options"])
            cand = scratch / f"{output.stem}.{picked}-{extra}.onnx"
            # continue from the chosen model's file: its qdq-stage algorithms are not run again
            trial = replace(
                final_cfg,
                algorithms=names + [extra],
                extra_algorithms=[],
                qdq_start=qdq_start(chosen["file"], names),
                save_prepass=prepass(cand),
            )
            t0 = time.perf_counter()
            quantize_recipe(resolved, task_name, calib, cand, trial, stage)
            seconds[extra] = round(time.perf_counter() - t0, 1)
            scores = _validate(cand)
            rows.append(
                {"method": chosen["method"], "options": chosen["options"], "algorithm": extra,
                 **scores, "file": str(cand)}
            )  # fmt: skip
            rows[-1]["vs_without_ci95"] = _margin(rows[-1], chosen)
            log.info("auto: + %s -> validation %s (without: %s %.8g)", extra, scores, key, base_scores[key])
            if by_loss:
                # det: its 60 held-out images hold ~260 boxes, one box is 0.4 pt of hmean or fidelity,
                # and over three calibration draws the two box figures kept distill once while the
                # held-out output loss fell every time (``python benchmarks/distill_draws.py``)
                with_loss, without_loss = losses[str(cand)], losses[chosen["file"]]
                rows[-1]["without_output_loss"] = round(float(without_loss.mean()), 8)
                rows[-1]["output_loss_lower_on"] = f"{int((with_loss < without_loss).sum())}/{len(with_loss)}"
                rows[-1]["judged_by"] = "held-out output loss"
                rows[-1]["kept"] = keep_learned(with_loss, without_loss, rows[-1]["vs_without_ci95"])
            else:
                rows[-1]["kept"] = scores[key] > base_scores[key] and scores[other] >= base_scores[other]
            if rows[-1]["kept"]:
                names, chosen, base_scores = names + [extra], rows[-1], scores
        # base_scores: the held-out figures of the model written
        held_out_drop = round(100 * (reference.primary - base_scores["val_metric"]), 4)
        drop_bound = _drop_bound(task.new_metric(), reference.samples, labelled.get(str(chosen["file"]), []))
        _warn_drop(held_out_drop, len(split.validation), primary)
        copy_quantized(chosen["file"], output)
        side = read_sidecar(chosen["file"])
        side["output"] = str(output)
        side["method_search"] = {
            "chosen": {"method": chosen["method"], "options": chosen["options"], "algorithms": names},
            "validation": {
                "source": split.source,
                "size": len(split.validation),
                "calib_size": calib_size,
                "criterion": key,
                "float_metric": round(reference.primary, 6),
                "chosen_metric": base_scores["val_metric"],
                "drop_points": held_out_drop,  # the written model's label-metric drop on these images
                "drop_bound_points": drop_bound,  # its one-sided 90 % upper bound (paired bootstrap)
            },  # fmt: skip
            "candidates": [{k: v for k, v in r.items() if k != "file"} for r in rows],
            "seconds": seconds,  # wall time of the range candidates (on the executor) and each trial
        }
        write_sidecar(output, side)
    result = quantize_result_from_sidecar(output, side, final_cfg)
    return result, side["method_search"]["candidates"]


def quantize(
    model: ResolvedModel,
    task_name: str | None,
    calib: Dataset,
    output: str | Path,
    config: QuantConfig | None = None,
    executor: Executor | None = None,
) -> QuantResult:
    """Quantize a float OCR model: ``config``'s recipe, or (``method="auto"``, every task's default)
    the recipe :func:`quantize_auto` picks on held-out calibration-side images, its trials run on
    ``executor`` (None: in this process). Writes ``output`` and ``<output stem>.quant.json``. The
    model comes resolved and the calibration set opened, once, by the CLI or API: every trial below
    uses these objects (the zoo entry's preset with them) rather than looking a path up again."""
    cfg = config or QuantConfig()
    check_output(output, model.path)  # before any trial: a refused command writes nothing
    name = infer_task(model, task_name)
    if resolve_method(cfg, name)[0] != "auto":
        return quantize_recipe(model, name, calib, output, cfg)  # it checks the model itself
    # an INT8 or another task's model is refused here, before any trial (a trial's error would come
    # back wrapped in the executor's)
    float_model_task(model, name, cfg)
    return quantize_auto(model, name, calib, output, cfg, executor=executor)[0]


def search_summary(search: dict[str, Any]) -> str:
    """One line saying what ``auto`` chose and what it tried, for the user to see which recipe ran:
    the range method among the candidates, the validated algorithms kept and not kept, and any not
    tried because an optional extra is missing (so a run without torch says so, rather than silently
    giving another recipe)."""
    rows = search.get("candidates", [])
    chosen = search.get("chosen", {})
    ranges = [candidate_tag(r["method"], r.get("options") or {}) for r in rows if "algorithm" not in r]
    kept = [r["algorithm"] for r in rows if r.get("kept")]
    rejected = [r["algorithm"] for r in rows if "algorithm" in r and r.get("kept") is False]
    skipped = [f"{r['algorithm']} ({r['skipped']})" for r in rows if "skipped" in r]
    picked = candidate_tag(chosen.get("method", "?"), chosen.get("options") or {})
    parts = [f"auto: range {picked} of {', '.join(ranges)}"]
    parts.append(f"kept {', '.join(kept) or 'none'}")
    if rejected:
        parts.append(f"not kept {', '.join(rejected)}")
    if skipped:
        parts.append(f"not tried {', '.join(skipped)}")
    return "; ".join(parts)


def prepass(model_file: str | Path) -> Path:
    """Where ``auto`` keeps a candidate's QDQ model before the target's graph passes."""
    path = Path(model_file)
    return path.with_name(path.stem + ".prepass.onnx")


def qdq_start(model_file: str | Path, names: list[str]) -> QdqStart:
    """Continue from ``model_file`` (written by ``auto`` with the algorithms ``names``): its pre-pass
    QDQ model, the qdq-stage algorithms in it, and their reports from its sidecar."""
    applied = tuple(n for n in names if ALGORITHMS[n].stage == "qdq")
    return QdqStart(prepass(model_file), applied, dict(read_sidecar(model_file).get("algorithms", {})))


def keep_learned(loss_with: Any, loss_without: Any, metric_ci: dict[str, float] | None) -> bool:
    """Keep an algorithm (bias correction, distill) on a task ranked by its output loss when its mean
    held-out output loss (per image, :func:`~ocrquant.quantization.algorithms.distill.output_losses`)
    is below the model's without it, unless the held-out label metric resolves a fall (its paired 95 %
    interval of with - without lies below zero). Why not the box figures alone: on det they read
    60-image noise, while the dense, label-free output loss agreed with test fidelity over three
    calibration draws (``python benchmarks/distill_draws.py --seeds 0 1 2``)."""
    falls = float(np.mean(loss_with)) < float(np.mean(loss_without))
    return falls and not (metric_ci is not None and metric_ci["high"] < 0)


#: held-out drop (points) past which an ``auto`` model is not shipped as it is: with at least
#: :data:`BUDGET_MIN_IMAGES` held-out images the budget search keeps its most sensitive blocks float
#: (:func:`ocrquant.tuning.budget.escalate_to_budget`); with fewer, ``auto`` says so.
DROP_WARNING_POINTS = 1.0
#: held-out images the budget search needs to act on its own: below that one image is worth several
#: tenths of a point and the search would chase single images (300 rec crops: a set that met 0.3 pt
#: lost 2.2 on the test set, budget.py's module doc)
BUDGET_MIN_IMAGES = 1000


def _drop_bound(metric: Any, float_samples: list, int8_samples: list) -> float | None:
    """One-sided 90 % upper bound (points) of the INT8 model's drop below FP32 on the held-out images:
    the paired bootstrap's 80 % two-sided interval, low end. The budget search asks the same margin
    of every set it accepts (``DEFAULT_CONFIDENCE``); a drop just under a point on 2000 images is not
    evidence of a model within a point (PP-OCRv3 rec: 0.95 held out, 1.06 on the test set)."""
    iv = paired_delta_interval(metric, float_samples, int8_samples, level=0.8)
    return None if iv is None else round(-100 * iv["low"], 4)


def _warn_drop(drop_points: float, size: int, metric: str) -> None:
    """Say so when the written model loses more than :data:`DROP_WARNING_POINTS` on too few held-out
    images for the budget search to run by itself. ``auto`` only sets ranges and accuracy algorithms,
    every quantizable layer stays INT8; where that costs more than a point (PP-OCRv3 rec: 0.95 pt on
    2000 held-out rec_train crops, 90 % bound 1.55, 1.06 on the test set), the budget search keeps the
    few layers float that cause it at little speed cost (rec: 7 blocks, 1.88x instead of 2.03x FP32
    speed; ``ocrquant quantize -m ppocrv3-rec --calib-data rec_train``, its ``.mixed.json``)."""
    if drop_points > DROP_WARNING_POINTS and size < BUDGET_MIN_IMAGES:
        log.warning(
            "auto: the INT8 model's %s is %.2f points below FP32 on %d held-out images, too few to "
            "search for layers to keep float by default; --max-drop POINTS does it",
            metric,
            drop_points,
            size,
        )


def _loss_samples(loss: Any) -> list[dict[str, Any]]:
    """Per-image output losses as evaluation samples (``paired_mean_interval``'s input)."""
    return [{"key": str(i), "figures": {"loss": float(v)}} for i, v in enumerate(loss)]


def _warn_unresolved(rows: list[dict[str, Any]], chosen: dict[str, Any], key: str, size: int) -> None:
    """Say so when the held-out images cannot tell the chosen range method from another one: the
    bootstrap interval of (other - chosen) on the criterion ``key``, oriented so that above zero is
    better, reaches above zero. The choice then rests on noise, which the user should know before
    reading a test-set delta as the method's merit (det's 60 images: ~1 pt of hmean)."""
    field = "vs_chosen_loss_ci95" if key == LOSS_KEY else "vs_chosen_ci95"
    close = [r for r in rows if r.get(field) and r[field]["high"] > 0]
    if close:
        names = ", ".join(f"{r['method']} {r['options'] or ''}".strip() for r in close)
        log.warning(
            "auto: on %d held-out images, %s is not separable from the chosen %s %s (95%% interval of "
            "the %s difference reaches above 0); the pick among them is within noise",
            size,
            names,
            chosen["method"],
            chosen["options"] or "",
            key.removeprefix("val_"),
        )


def quantize_result_from_sidecar(output: Path, side: dict[str, Any], config: QuantConfig) -> QuantResult:
    return QuantResult(
        output=output, sidecar=sidecar_path(output), task=side.get("task", ""), target=config.target,
        method=str(config.method),
        num_calibration_images=int(side.get("num_calibration_images", config.calib_size)),
        node_counts=side.get("node_counts", {}), float_nodes=side.get("float_nodes", {}),
        timings=side.get("timings", {}), algorithms=side.get("algorithms", {}), cache_hit=True,
    )  # fmt: skip
