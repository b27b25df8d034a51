"""Mixed precision for an accuracy budget: the fewest layers kept float (or int16) that hold the
primary metric within ``max_drop`` points of FP32 on a validation subset.

Search (:func:`greedy_search`): if the INT8 model misses the budget, first check that keeping *every*
candidate float meets it (otherwise the budget is out of reach: reported after one evaluation). Then,
with layers ranked by sensitivity (:mod:`ocrquant.analysis.sensitivity`), most sensitive first, find
the shortest prefix of the ranking that meets the budget: by bisection (``walk="bisect"``, default:
about log2(n) evaluations) or by adding one layer at a time (``"linear"``). Then a pruning pass tries to
remove the last ``max_prune`` chosen layers again (a later addition often makes an earlier one
unnecessary) and keeps every removal that stays within budget. Each distinct set is evaluated once
(memoised). Why bisection: with the confidence margin below, PP-OCRv3 rec needs more than ten blocks
float; the linear walk scored 16 sets (80 s each on 4000 crops) without reaching it, and its drops
along the way were not monotone (0.22 pt with one block float, 1.05 with four, 0.40 with fourteen),
so walking one layer at a time mostly measures noise between neighbouring sets.

Evaluation of a candidate set:

* ``keep="float"``: a graph edit of one pipeline-written INT8 model, seconds per set; it equals the
  model the pipeline writes with ``exclude`` = the layers (``granularity="layer"``: weights only) or
  the layers with their activation nodes (``"block"``, default: their output tensors go float too).
  See :mod:`ocrquant.analysis.sensitivity`.
* ``keep="int16"``: the pipeline re-run per set with ``dtype_overrides`` = int16 for the layer's input
  and output activations (exact, but each run repeats the float stage: tens of seconds).

Either way the chosen set is finally quantized through the pipeline (``exclude`` or
``dtype_overrides``) into ``output``, and *that* model is evaluated on the validation subset and timed:
the report's final figures are the deployed model's, not the edit's.

Algorithms that rewrite the written QDQ model (stage ``qdq``: bias correction) are left out of the
models the search edits, and put back for the final model only if they raise its validation metric.
Bias correction fixes each conv's bias for the error of every quantized layer upstream of it; in an
edit that floats an upstream layer those corrections over-correct. Measured on PP-OCRv3 rec (2000
held-out crops / full test): keeping the top 1, 2, 4 layers float by graph edit of the corrected model
scored 0.618 / 0.6175 / 0.622 (test 0.5980 / 0.5985 / 0.5980) where the pipeline's own models with
those layers excluded scored 0.6195 / 0.624 / 0.625 (test 0.5994 / 0.6038 / 0.6004): the edit misjudges
the sets it is asked about. Without the correction, edit and pipeline are the same model (tested), so
the search is consistent. Nor does the correction reliably help the final set (why is not
established): PP-OCRv3 rec with 3 blocks float, without / with it: 0.629 / 0.6195 held-out, 0.6057 /
0.5941 test. So it is validated, as ``auto`` validates it.

Budget: ``max_drop`` is in points of the primary metric (100 x the 0..1 value) below the FP32 model on
the same validation subset. One validation image is ``100 / n`` points, so the subset must be large for
a budget of a few tenths of a point to mean anything: by default (:data:`BUDGET_VAL_SIZE`) it is every
held-out rec_train crop up to 4000 for rec and cls, 60 det images. With 300 crops a 0.3 point budget
means "no crop lost", and the search chases single crops: measured on PP-OCRv3 rec, a set that met it on
300 crops lost 2.2 points on the test set.

Confidence: a set meets the budget when its validation drop *plus z standard errors* does
(``confidence``, default 0.9 one-sided, z = 1.28). The standard error is a paired bootstrap over the
validation samples (:meth:`~ocrquant.analysis.sensitivity.Validator.drop_se_points`); it is large while
the variant disagrees with FP32 on many samples and shrinks as it approaches FP32, so the margin asks for
a model whose drop is small *and* stable, not one whose drop happens to be small on these samples. Why:
the search scores tens of sets on one subset and stops at the first that passes, so the passing set's
validation figure is flattered (the winner's curse). Measured on PP-OCRv3 rec with the point estimate
alone (2000 held-out crops): two runs of one command met 0.3 pt on validation (-0.10 both times) and
scored -0.29 and -0.91 on the test set. ``confidence=0.5`` is the point estimate.

Ranking (``mode``): by default ``"only-quantized"``, each block quantized alone in the float model
(the error it adds by itself), most harmful first; ``"only-float"`` ranks by what floating the block
alone in the INT8 model buys. Measured on PP-OCRv3 rec (4000 held-out crops, mse, no bias correction,
INT8 drop 1.97 pt): floating the top 24 of 49 blocks of the only-float ranking left a 2.55 pt drop,
36 blocks 1.80, 42 blocks 2.00; the top 24 of the only-quantized ranking left 0.07 pt. Errors compound:
floating one block of a chain of damaged layers buys nothing while its neighbours stay quantized, so
the only-float ranking puts exactly those blocks last.

Ranking criterion (``rank_by``), scored on the first ``rank_size`` validation images:
``"fidelity"``, agreement with the FP32 model's own predictions (every change quantization makes
counts, not just the net of crops won and lost; the criterion ``--method auto`` uses); ``"metric"``,
the label metric (``ocrquant sensitivity``'s default); ``"snr"``, the SNR of the final output on
``snr_samples`` images (cheapest). ``"auto"`` (default) takes the task metric's own
``selection``: fidelity for rec and cls, the label metric for det. Measured on PP-OCRv3 rec (2000
held-out crops): the SNR ranking puts the last convs first, and keeping the top one (``Conv_34``) float
*lowers* accuracy (0.621 -> 0.618, test 0.6033 -> 0.5980): the probability map's SNR is dominated by
confident time steps, which decoding does not care about.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import onnx
from tqdm import tqdm

from ocrquant.analysis.sensitivity import (
    Score,
    Validator,
    VariantBuilder,
    analyze_layers,
    json_safe,
    time_models,
)
from ocrquant.data import Dataset
from ocrquant.data.split import split_calibration
from ocrquant.errors import OcrQuantError
from ocrquant.fileio import (
    atomic_path,
    copy_quantized,
    read_sidecar,
    scratch_dir,
    sidecar_path,
    write_json_atomic,
    write_sidecar,
)
from ocrquant.quantization.algorithms import ALGORITHMS  # the package import registers them all
from ocrquant.quantization.config import QuantConfig, QuantResult, pinned_config, resolve_method
from ocrquant.quantization.pipeline import algorithm_names, check_output
from ocrquant.tuning.executor import Executor
from ocrquant.tuning.method_search import (
    BUDGET_MIN_IMAGES,
    DROP_WARNING_POINTS,
    calib_size_leaving_validation,
    quantize,
)
from ocrquant.tuning.pair import quantize_pair
from ocrquant.tuning.probes import executor_scorer
from ocrquant.zoo.resolve import ResolvedModel
from ocrquant.zoo.task import build_task, infer_task

log = logging.getLogger("ocrquant")

KEEP_MODES = ("float", "int16")
WALKS = ("linear", "bisect")
#: one-sided level at which a set must meet the budget (see the module doc)
DEFAULT_CONFIDENCE = 0.9
#: validation samples the search scores every set on, when not given: 4000 of rec_train's 4268 held-out
#: crops for rec and cls (4468 crops, 200 calibrate); det_train has 200 images, 60 held out
BUDGET_VAL_SIZE = {"det": 60, "cls": 4000, "rec": 4000}
RANK_BY = ("auto", "fidelity", "metric", "snr")


@dataclass
class SearchStep:
    """One evaluated set. ``action``: base | feasibility (every candidate at once) | add | bisect |
    prune-removed | prune-kept | final."""

    action: str
    layer: str | None
    float_layers: list[str]
    metric: float  # primary metric (0..1) on the validation subset
    drop_points: float  # 100 x (FP32 - metric)
    within_budget: bool
    latency_ms: float | None = None  # median ms per model call, interleaved with FP32 and INT8
    se_points: float | None = None  # paired bootstrap standard error of drop_points
    bound_points: float | None = None  # drop_points + z x se_points: what the budget is checked against


@dataclass
class SearchReport:
    task: str
    model: str
    keep: str
    metric_name: str
    max_drop_points: float
    fp32_metric: float
    int8_metric: float
    met: bool
    chosen: list[str]
    steps: list[SearchStep]
    ranking: list[str]
    validation: dict[str, Any]
    latency_ms: dict[str, float] = field(default_factory=dict)  # fp32, int8, final
    final_metric: float | None = None  # the re-quantized output model on the validation subset
    output: str = ""
    report_path: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    # The per-layer analysis behind ``ranking`` (most sensitive first), when the search ran it: kept
    # even when the budget needs no float layer, since it is then what explains the model.
    sensitivity: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:

        return json_safe(asdict(self))

    def save(self, path: str | Path) -> Path:
        self.report_path = str(path)
        write_json_atomic(path, self.to_json())
        return Path(path)

    def summary(self) -> str:
        """Two lines for the CLI."""
        lat = self.latency_ms
        speed = ""
        if lat.get("fp32") and lat.get("final"):
            ratio = lat["fp32"] / lat["final"]
            speed = f", latency {lat['final']:.1f} ms vs FP32 {lat['fp32']:.1f} ms ({ratio:.2f}x)"
        final = self.final_metric if self.final_metric is not None else math.nan
        last = self.steps[-1] if self.steps else None
        bound = ""
        if last is not None and last.se_points is not None:
            level = self.settings.get("confidence", 0.5)
            bound = (
                f" (drop {last.drop_points:.2f} +- {last.se_points:.2f} pt, "
                f"{level:.0%} bound {last.bound_points:.2f})"
            )
        return (
            f"mixed precision ({self.keep}): {len(self.chosen)} layer(s) "
            f"{'met' if self.met else 'did NOT meet'} the budget of {self.max_drop_points:g} points{bound}: "
            f"{self.metric_name} {100 * final:.2f} vs FP32 {100 * self.fp32_metric:.2f} "
            f"(INT8 {100 * self.int8_metric:.2f}) on {self.validation.get('validation_images')} "
            f"validation images{speed}\n"
            f"kept {self.keep}: {', '.join(self.chosen) or '(none)'}"
        )


def _subset_caution(int8_drop_points: float, max_drop: float, images: int) -> str:
    """A warning when the all-INT8 model beats FP32 on the validation subset by more than the budget.

    Quantization noise does not make a model better; a subset on which it seems to is too small or
    too unlike the target data to judge a budget that fine. Measured: PP-OCRv3 / v4 det score +1.4 /
    +1.5 pt *above* FP32 on det_train's 60 held-out images and -0.42 / -1.29 pt on det_test, so the
    search floats nothing and reports the budget met.
    """
    if int8_drop_points >= -max_drop:
        return ""
    return (
        f"INT8 scores {-int8_drop_points:.2f} pt above FP32 on the {images} validation images: too few or "
        f"too unlike the target data to judge a {max_drop:g} pt budget; pass --val-data with a larger "
        "labelled set (never the test set)"
    )


def _show_step(bar: Any, step: SearchStep) -> None:
    """One search step on the progress bar: what was tried and the drop it gave (a long search shows
    where it stands, and an interrupted one what it had found)."""
    what = f"{step.action} {step.layer}" if step.layer else step.action
    shown = f"{what}: {len(step.float_layers)} float, drop {step.drop_points:.2f} pt"
    bar.set_postfix_str(shown, refresh=False)
    bar.update(1)


def judged_step(
    action: str,
    layer: str | None,
    layers: Sequence[str],
    metric: float,
    reference: float,
    se: float | None,
    z: float,
    max_drop_points: float,
) -> SearchStep:
    """A scored set, judged against the budget: its drop plus ``z`` standard errors (when it has one)
    must be within ``max_drop_points``. The search's steps and the final model are judged alike."""
    drop = 100.0 * (reference - metric)
    bound = drop + z * se if se is not None else drop
    ok = bound <= max_drop_points + 1e-9
    return SearchStep(action, layer, list(layers), metric, drop, ok, se_points=se, bound_points=bound)


def greedy_search(
    ranking: Sequence[str],
    score: Callable[[frozenset[str]], float],
    reference: float,
    max_drop_points: float,
    *,
    max_layers: int | None = None,
    on_step: Callable[[SearchStep], None] | None = None,
    spread: Callable[[frozenset[str]], float | None] | None = None,
    z: float = 0.0,
    walk: str = "linear",
    max_prune: int | None = None,
) -> tuple[list[str], list[SearchStep], bool]:
    """Greedy addition in ``ranking`` order until ``score(set)`` is within ``max_drop_points`` of
    ``reference``, then pruning. Returns (chosen layers in addition order, steps, budget met).

    ``score`` maps a set of float layers to the primary metric (0..1); it is called once per distinct
    set. ``spread`` (optional) maps a set already scored to the standard error of its drop in points;
    a set then meets the budget when ``drop + z x spread`` does (a one-sided confidence bound).
    ``walk``: "linear" adds one layer at a time; "bisect" finds the shortest passing prefix of the
    ranking by bisection between the INT8 base (fails) and every candidate (passes), about log2(n)
    evaluations instead of up to n. ``max_prune``: try removing at most this many of the chosen layers
    (the last added first); None: all; 0: no pruning.
    """
    if walk not in WALKS:
        raise OcrQuantError(f"unknown search walk '{walk}' (known: {', '.join(WALKS)})")
    if max_drop_points < 0:
        raise OcrQuantError(f"max_drop must be >= 0 points, got {max_drop_points}")
    if len(set(ranking)) != len(ranking):
        raise OcrQuantError("the sensitivity ranking names a layer twice")
    memo: dict[frozenset[str], tuple[float, float | None]] = {}
    steps: list[SearchStep] = []

    def evaluate(action: str, layer: str | None, layers: list[str]) -> bool:
        key = frozenset(layers)
        if key not in memo:
            metric = float(score(key))
            memo[key] = (metric, spread(key) if spread is not None else None)
        metric, se = memo[key]
        step = judged_step(action, layer, layers, metric, reference, se, z, max_drop_points)
        steps.append(step)
        if on_step is not None:
            on_step(step)
        return step.within_budget

    chosen: list[str] = []
    met = evaluate("base", None, chosen)
    limit = len(ranking) if max_layers is None else min(max_layers, len(ranking))
    if not met and limit > 1 and not evaluate("feasibility", None, list(ranking[:limit])):
        # Not even every candidate kept float meets the budget: say so after one evaluation instead
        # of walking the whole ranking.
        return list(ranking[:limit]), steps, False
    if walk == "bisect" and not met and limit > 1:
        # the invariant: prefix `low` fails, prefix `high` passes (the feasibility step)
        low, high = 0, limit
        while high - low > 1:
            mid = (low + high) // 2
            if evaluate("bisect", ranking[mid - 1], list(ranking[:mid])):
                high = mid
            else:
                low = mid
        chosen, met = list(ranking[:high]), True
    for layer in ranking[:limit]:
        if met:
            break
        chosen.append(layer)
        met = evaluate("add", layer, chosen)
    if not met or max_prune == 0:
        return chosen, steps, met
    # Pruning, least sensitive (last added) first: an early, very sensitive layer is the least likely
    # to be redundant, so trying it last gives the others the chance to go first.
    tries = list(reversed(chosen))[: len(chosen) if max_prune is None else max_prune]
    for layer in tries:
        trial = [c for c in chosen if c != layer]
        ok = evaluate("prune-try", layer, trial)
        steps[-1].action = "prune-removed" if ok else "prune-kept"
        if ok:
            chosen = trial
    return chosen, steps, True


def layer_activations(qmodel: onnx.ModelProto, layer: str) -> list[str]:
    """The float names of a layer's quantized activation inputs and its output (int16 candidates)."""
    prod = {o: n for n in qmodel.graph.node for o in n.output}
    node = next((n for n in qmodel.graph.node if n.name == layer), None)
    if node is None:
        raise OcrQuantError(f"no layer named {layer} in the quantized model")
    inits = {i.name for i in qmodel.graph.initializer}
    names = []
    for i in node.input:
        dq = prod.get(i)
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] not in inits:
            q = prod.get(dq.input[0])
            names.append(q.input[0] if q is not None and q.op_type == "QuantizeLinear" else dq.input[0])
    names.extend(o for o in node.output if o)
    return names


def config_for(
    config: QuantConfig,
    keep: str,
    layers: Sequence[str],
    qmodel: onnx.ModelProto,
    float_nodes: Sequence[str] | None = None,
) -> QuantConfig:
    """``config`` with ``layers`` kept float (``exclude`` = ``float_nodes``, the layers and, at block
    granularity, their activation nodes) or with int16 activations (``dtype_overrides``)."""
    if keep == "float":
        names = list(float_nodes) if float_nodes is not None else list(layers)
        return dataclasses.replace(
            config, exclude=list(config.exclude) + [x for x in names if x not in config.exclude]
        )
    overrides = dict(config.dtype_overrides)
    for layer in layers:
        for t in layer_activations(qmodel, layer):
            overrides[t] = "int16"
    return dataclasses.replace(config, dtype_overrides=overrides)


def _without_qdq_stage(config: QuantConfig) -> QuantConfig:
    """``config`` (pinned: explicit algorithm list) without the algorithms that rewrite the written
    QDQ model."""

    names = list(config.algorithms or [])
    return dataclasses.replace(config, algorithms=[n for n in names if ALGORITHMS[n].stage != "qdq"])


@dataclass(frozen=True)
class BudgetConfig:
    """What the budget search keeps within (``max_drop`` points below FP32 on the validation images)
    and how it ranks, walks and judges layer sets (the module doc says why each default)."""

    max_drop: float
    val_size: int | None = None  # None: the task's BUDGET_VAL_SIZE
    keep: str = "float"  # KEEP_MODES
    granularity: str = "block"
    mode: str = "only-quantized"
    rank_by: str = "auto"
    rank_size: int = 500
    ranking: Sequence[str] | None = None  # None: computed by the sensitivity analysis
    threads: int = 2
    snr_samples: int = 64
    latency: bool = True
    prune: bool = True
    progress: bool = True
    confidence: float = DEFAULT_CONFIDENCE
    walk: str = "bisect"
    max_prune: int | None = 8
    max_float_share: float | None = None  # None: no cap


def quantize_with_budget(
    model: ResolvedModel,
    task: str | None,
    calib: Dataset,
    val: Dataset | None,
    output: str | Path,
    config: QuantConfig | None,
    budget: BudgetConfig,
    *,
    work_dir: str | Path | None = None,
    pair: Any = None,
    executor: Executor | None = None,
) -> tuple[QuantResult, SearchReport]:
    """Quantize ``model`` keeping the fewest sensitive layers float/int16 such that the primary
    metric on the validation subset drops at most ``max_drop`` points below FP32.

    ``model``, ``calib`` and ``val`` come resolved and opened by the CLI or API. ``val`` None:
    validation images are drawn from ``calib`` minus the calibration pick (never the test set);
    ``val_size`` None: the task's :data:`BUDGET_VAL_SIZE`. ``confidence``: the one-sided level at which
    a set must meet the budget (0.5: the validation figure itself; see the module doc). ``ranking``
    None: computed by the sensitivity analysis (``mode``, ``rank_by``, see the module doc).
    ``max_float_share``: keep at most this share of the ranked layers float (the search reports the
    budget unmet beyond it; None: no cap). ``pair``: a
    :class:`~ocrquant.analysis.sensitivity.QuantizedPair` from an earlier run with the same ``config``
    (skips its two pipeline runs). ``executor``: where the ranking's probes run (one per block, the
    search's parallel part; :mod:`ocrquant.tuning.probes`); None: in this process. Writes ``output``,
    its pipeline sidecar and ``<output stem>.mixed.json`` (the report, every step with its metric and
    latency).
    """
    max_drop, val_size, keep, granularity = budget.max_drop, budget.val_size, budget.keep, budget.granularity
    mode, rank_by, rank_size, ranking = budget.mode, budget.rank_by, budget.rank_size, budget.ranking
    threads, snr_samples, latency, prune = budget.threads, budget.snr_samples, budget.latency, budget.prune
    progress, confidence, walk = budget.progress, budget.confidence, budget.walk
    max_prune, max_float_share = budget.max_prune, budget.max_float_share

    if keep not in KEEP_MODES:
        raise OcrQuantError(f"unknown keep mode '{keep}' (known: {', '.join(KEEP_MODES)})")
    if rank_by not in RANK_BY:
        raise OcrQuantError(f"unknown ranking '{rank_by}' (known: {', '.join(RANK_BY)})")
    if walk not in WALKS:
        raise OcrQuantError(f"unknown search walk '{walk}' (known: {', '.join(WALKS)})")
    if not 0.5 <= confidence < 1.0:
        raise OcrQuantError(f"confidence must be in [0.5, 1), got {confidence:g}")
    z = NormalDist().inv_cdf(confidence)
    cfg = config or QuantConfig()
    output = check_output(output, model.path)
    task_name = infer_task(model, task)
    n_val = val_size if val_size is not None else BUDGET_VAL_SIZE.get(task_name, 300)
    if val is None:  # validation images come out of the calibration directory, as auto takes them
        reserved = calib_size_leaving_validation(cfg.calib_size, len(calib.samples), n_val)
        cfg = dataclasses.replace(cfg, calib_size=reserved)
    split = split_calibration(calib, cfg.calib_size, cfg.seed, n_val, val_data=val)
    task_obj = build_task(task_name, model, cfg.task_options)

    with scratch_dir("mixed") as tmp:
        work = Path(work_dir) if work_dir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if pair is None and resolve_method(cfg, task_name)[0] != "auto":  # the algorithms are known now
            full = algorithm_names(cfg, task_name)
            cfg = dataclasses.replace(cfg, algorithms=full, extra_algorithms=[])
            pair = quantize_pair(model, task_name, calib, work, _without_qdq_stage(cfg))
            cfg = dataclasses.replace(pinned_config(cfg, pair.quantized.output), algorithms=full)
        else:
            if pair is None:  # auto: the pair's run chooses the method and the algorithms
                pair = quantize_pair(model, task_name, calib, work, cfg)
            cfg = pinned_config(cfg, pair.quantized.output)  # later models repeat the pair's float stage
            if _without_qdq_stage(cfg).algorithms != cfg.algorithms:
                # see the module doc: edits of a bias-corrected model misjudge the sets
                pair = quantize_pair(model, task_name, calib, work / "search", _without_qdq_stage(cfg))
        search_cfg = _without_qdq_stage(cfg)
        int8_path = Path(pair.quantized.output)
        qmodel = onnx.load(str(int8_path))
        builder = VariantBuilder(qmodel, onnx.load(str(pair.reference)), granularity)
        validator = Validator(
            task_obj,
            split.validation,
            pair.float_model,
            threads=threads,
            snr_samples=snr_samples,
            progress=progress,
        )
        if rank_by == "auto":
            rank_by = task_obj.new_metric().selection  # "fidelity" | "metric"
        analysis: list[dict[str, Any]] = []
        if ranking is None:
            ranker = validator
            subset = validator.snr_count if rank_by == "snr" else rank_size
            if subset < len(split.validation):  # the ranking needs fewer images than the search
                ranker = Validator(
                    task_obj,
                    split.validation[:subset],
                    pair.float_model,
                    threads=threads,
                    snr_samples=snr_samples,
                    metric=rank_by != "snr",
                    progress=progress,
                )
            sens = analyze_layers(
                builder,
                ranker,
                int8_path,
                mode=mode,
                latency="none",
                work_dir=work,
                scorer=executor_scorer(executor, ranker),
            )
            ranking = sens.ranking(rank_by)
            analysis = [asdict(row) for row in sens.ranked(rank_by)]
        else:
            unknown = [r for r in ranking if r not in builder.layers]
            if unknown:
                raise OcrQuantError(f"ranking names layers the model does not quantize: {', '.join(unknown)}")
        models: dict[frozenset[str], Path] = {}

        def model_for(layers: frozenset[str]) -> Path:
            if layers not in models:
                path = work / f"set_{len(models):03d}.onnx"
                if keep == "float":
                    builder.save(path, float_layers=sorted(layers))
                else:
                    quantize(
                        model,
                        task_name,
                        calib,
                        path,
                        config_for(search_cfg, keep, sorted(layers), qmodel),
                    )
                models[layers] = path
            return models[layers]

        scores: dict[frozenset[str], Score] = {}

        def score(layers: frozenset[str]) -> float:
            scores[layers] = validator.score(model_for(layers))
            return scores[layers].metric

        def spread(layers: frozenset[str]) -> float | None:
            return validator.drop_se_points(scores[layers])

        bar = None
        if progress:
            bar = tqdm(desc="mixed-precision search", unit="set", leave=False)
        cap = None if max_float_share is None else max(1, int(max_float_share * len(ranking)))
        chosen, steps, met = greedy_search(
            ranking,
            score,
            validator.fp32.metric,
            max_drop,
            max_layers=cap,
            on_step=(lambda s: _show_step(bar, s)) if bar is not None else None,
            spread=spread,
            z=z,
            walk=walk,
            max_prune=max_prune if prune else 0,
        )
        if bar is not None:
            bar.close()
        caution = _subset_caution(steps[0].drop_points, max_drop, len(split.validation))
        if caution:
            log.warning(caution)

        final_cfg = config_for(cfg, keep, chosen, qmodel, builder.float_nodes(chosen))
        result = quantize(model, task_name, calib, output, final_cfg)
        final = validator.score(result.output)
        qdq_stage_check: dict[str, float] = {}
        if search_cfg.algorithms != cfg.algorithms:
            # The chosen set's search model is the pipeline's model without the qdq-stage algorithms;
            # they are kept only if they raise the validation metric (as `auto` keeps bias correction).
            searched = next(s.metric for s in steps if frozenset(s.float_layers) == frozenset(chosen))
            qdq_stage_check = {"with": final.metric, "without": searched}
            if searched > final.metric:
                final_cfg = config_for(search_cfg, keep, chosen, qmodel, builder.float_nodes(chosen))
                result = quantize(model, task_name, calib, output, final_cfg)
                final = validator.score(result.output)
        steps.append(
            judged_step(
                "final",
                None,
                chosen,
                final.metric,
                validator.fp32.metric,
                validator.drop_se_points(final),
                z,
                max_drop,
            )
        )
        lat: dict[str, float] = {}
        if latency:
            keys = {layers: f"set{i}" for i, layers in enumerate(models)}
            timed = {"fp32": pair.float_model, "int8": int8_path, "final": Path(result.output)}
            timed.update({keys[layers]: path for layers, path in models.items()})
            ms = time_models(timed, validator.bench_inputs(), threads)
            lat = {k: ms[k] for k in ("fp32", "int8", "final")}
            for s in steps[:-1]:
                s.latency_ms = ms.get(keys.get(frozenset(s.float_layers), ""))
            steps[-1].latency_ms = ms["final"]

    report = SearchReport(
        task=task_name,
        model=str(model.path),
        keep=keep,
        metric_name=task_obj.new_metric().primary,
        max_drop_points=max_drop,
        fp32_metric=validator.fp32.metric,
        int8_metric=steps[0].metric,  # the "base" step: no layer kept float
        met=steps[-1].within_budget,
        chosen=list(chosen),
        steps=steps,
        ranking=list(ranking),
        sensitivity=analysis,
        validation=split.describe(),
        latency_ms=lat,
        final_metric=final.metric,
        output=str(output),
        settings={
            "mode": mode,
            "granularity": granularity,
            "rank_by": rank_by,
            "rank_size": min(rank_size, len(split.validation)),
            "snr_samples": validator.snr_count,
            "prune": prune,
            "max_prune": max_prune,
            "max_float_share": max_float_share,
            "walk": walk,
            "confidence": confidence,
            "z": z,
            "threads": threads,
            "latency_inputs": len(validator.bench_inputs()),
            "search_met_on_edited_graph": met,
            "sidecar": str(sidecar_path(output)),
            "exclude": final_cfg.exclude,
            "dtype_overrides": final_cfg.dtype_overrides,
            "search_algorithms": search_cfg.algorithms,
            "final_algorithms": final_cfg.algorithms,
            "qdq_stage_algorithms_metric": qdq_stage_check,  # final set with / without them
            "caution": caution,
        },
    )
    report.save(output.with_name(output.stem + ".mixed.json"))
    return result, report


#: The largest share of the ranked blocks the automatic escalation after ``auto`` keeps float (see
#: :func:`escalate_to_budget`): a few blocks, not a third of the model (the function says why).
AUTO_MAX_FLOAT_SHARE = 0.15


def needs_budget(output: str | Path) -> float | None:
    """The held-out drop (points) of an ``auto``-written model when it calls for the budget search,
    else None: on at least ``BUDGET_MIN_IMAGES`` held-out images, its one-sided 90 % upper bound (the
    margin the search itself asks of a set, ``DEFAULT_CONFIDENCE``) passes ``DROP_WARNING_POINTS``."""

    validation = read_sidecar(output).get("method_search", {}).get("validation", {})
    drop, size = validation.get("drop_points"), validation.get("size", 0)
    bound = validation.get("drop_bound_points", drop)
    if drop is None or bound is None or bound <= DROP_WARNING_POINTS or size < BUDGET_MIN_IMAGES:
        return None
    return float(drop)


def escalate_to_budget(
    model: ResolvedModel,
    task: str,
    calib: Dataset,
    result: QuantResult,
    config: QuantConfig,
    enabled: bool = True,
    threads: int = 2,
    progress: bool = True,
    executor: Executor | None = None,
) -> tuple[QuantResult, SearchReport | None]:
    """After ``auto``: if its model may lose more than a point on enough held-out images
    (:func:`needs_budget`), rewrite ``result.output`` with the fewest sensitive blocks kept float that
    bring it within a point, with the range method and algorithms ``auto`` chose. Why by default: every
    quantizable layer in INT8 is the goal, but a model that may lose more than a point is not one to
    ship. When the search's model is written, the sidecar keeps ``auto``'s ``method_search`` record
    (its phases' seconds, the all-INT8 model's held-out figures) and adds ``budget_search`` (the blocks
    kept float, the report's name) and the search's seconds.

    A few blocks, not a third of the model: at most :data:`AUTO_MAX_FLOAT_SHARE` of the ranked blocks
    stay float. Where those do not reach the budget the all-INT8 model is kept and the drop said, since
    what is left of INT8's speed then is not worth shipping either: PP-OCRv6 small rec lost 1.38 points
    all-INT8 on 4000 held-out crops, 0.73 with 17 of 70 blocks float and still missed the bound with 19
    (``ocrquant quantize -m ppocrv6-small-rec --calib-data .../rec_train``). ``--max-drop`` runs the
    uncapped search. Other models pass through untouched, and ``enabled=False`` (``--keep-all-int8``)
    only warns. ``executor``: where the search's ranking probes run (None: here)."""

    drop = needs_budget(result.output)
    if drop is None:
        return result, None
    if not enabled:
        log.warning(
            "auto: the INT8 model is %.2f points below FP32 on its held-out images (90 %% bound past "
            "a point); kept all-INT8 as asked (without --keep-all-int8 the most sensitive blocks would "
            "stay float)",
            drop,
        )
        return result, None
    log.warning(
        "auto: the INT8 model is %.2f points below FP32 on its held-out images (90 %% bound past a "
        "point); searching for the most sensitive blocks (at most %d %%) to keep float until it is "
        "within %.1f (--keep-all-int8 skips this)",
        drop,
        round(100 * AUTO_MAX_FLOAT_SHARE),
        DROP_WARNING_POINTS,
    )
    output = Path(result.output)
    with scratch_dir("escalate") as tmp:
        kept = [Path(tmp) / "all_int8.onnx", Path(tmp) / "all_int8.quant.json"]
        copy_quantized(output, kept[0])
        shutil.copyfile(sidecar_path(output), kept[1])
        search = read_sidecar(output).get("method_search")
        t0 = time.perf_counter()
        searched, report = quantize_with_budget(
            model,
            task,
            calib,
            None,
            output,
            pinned_config(config, output),
            BudgetConfig(
                DROP_WARNING_POINTS, threads=threads, progress=progress, max_float_share=AUTO_MAX_FLOAT_SHARE
            ),
            executor=executor,
        )
        if report.met:
            if search is not None:  # the search wrote a sidecar of its own: auto's record stays in it
                search.setdefault("seconds", {})["budget_search"] = round(time.perf_counter() - t0, 1)
                # its validation figures are the all-INT8 model's; the written model's are in the report
                search["budget_search"] = {
                    "float_blocks": list(report.chosen),
                    "report": output.stem + ".mixed.json",
                }
                write_sidecar(output, {**read_sidecar(output), "method_search": search})
            return searched, report
        copy_quantized(kept[0], output)
        with atomic_path(sidecar_path(output)) as dst:
            shutil.copyfile(kept[1], dst)
    log.warning(
        "auto: keeping %d of %d blocks float does not bring the INT8 model within %.1f points on its "
        "held-out images (%.2f points below FP32 with them); kept all-INT8 (%.2f below). "
        "--max-drop searches without that limit",
        len(report.chosen),
        len(report.ranking),
        DROP_WARNING_POINTS,
        100 * (report.fp32_metric - report.final_metric) if report.final_metric is not None else float("nan"),
        100 * (report.fp32_metric - report.int8_metric),
    )
    return result, report
