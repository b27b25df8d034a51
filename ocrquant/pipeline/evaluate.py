"""End-to-end evaluation: run an :class:`OcrPipeline` over a det dataset and score it with
:class:`~ocrquant.metrics.e2e.E2EMetric`, with no lexicon and/or the ICDAR2015 lexicons.

The pipeline runs once per image whatever the number of lexicons: predictions are stored (and appended
to ``<output>.partial.jsonl`` as they come, so an interrupted run resumes), and every lexicon's
figures are computed from the stored predictions at the end, in dataset order, so a resumed run gives
the same figures as an uninterrupted one. Latency is the pipeline's own per-image wall time
(detection + crops + classification + recognition, image decoding excluded).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ocrquant.data import open_dataset
from ocrquant.data.types import Dataset, DetTarget, load_image
from ocrquant.errors import OcrQuantError
from ocrquant.evaluation.evaluate import PartialLog, progress_bar, resume_key
from ocrquant.fileio import file_fingerprint
from ocrquant.metrics.e2e import LEXICON_FILES, E2EMetric, Lexicon, load_lexicon
from ocrquant.pipeline.build import build_pipeline, load_stage
from ocrquant.pipeline.core import STAGES, OcrPipeline, PipelineConfig, StageModel
from ocrquant.zoo.registry import DEFAULT_CHAIN

log = logging.getLogger("ocrquant")

LEXICON_CHOICES = ("none", *LEXICON_FILES)
TIMED_STAGES = ("det", "crop", "cls", "rec", "total")


@dataclass
class E2EResult:
    """Figures per lexicon (``metrics["none"]``, ``metrics["strong"]``, ...), latency and settings."""

    data: str
    metrics: dict[str, dict[str, float]]
    count: int
    skipped: list[dict[str, str]]
    timing: dict[str, Any]
    settings: dict[str, Any]
    samples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def hmean(self) -> float:
        """Hmean of the first lexicon setting evaluated (``none`` unless asked otherwise)."""
        return float(next(iter(self.metrics.values()))["hmean"])

    # The same read-only face as ocrquant.evaluation.EvalResult, so reports can list both kinds.
    task = "e2e"

    @property
    def primary(self) -> float:
        return self.hmean

    @property
    def model(self) -> str:
        """The chain as ``det+cls+rec`` model names."""
        return "+".join(m["name"] for m in self.settings.get("models", {}).values())

    def flat_metrics(self) -> dict[str, float]:
        """One flat dict for tables written for single-model results: the first lexicon's figures under
        their own names, every other lexicon's as ``<lexicon>_<figure>``."""
        flat: dict[str, float] = {}
        for i, (name, figures) in enumerate(self.metrics.items()):
            for key, value in figures.items():
                flat[key if i == 0 else f"{name}_{key}"] = value
        return flat

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_lexicons(lexicon: str | Sequence[str] | None) -> list[str]:
    """``None``/``"none"`` -> ["none"]; ``"all"`` -> every setting; a name or a list of names as given."""
    if lexicon is None:
        return ["none"]
    names = [lexicon] if isinstance(lexicon, str) else list(lexicon)
    out: list[str] = []
    for name in names:
        name = name.strip().lower()
        expanded = list(LEXICON_CHOICES) if name == "all" else [name]
        for n in expanded:
            if n not in LEXICON_CHOICES:
                raise OcrQuantError(f"unknown lexicon '{n}' (known: {', '.join(LEXICON_CHOICES)}, all)")
            if n not in out:
                out.append(n)
    return out


def default_vocab_dir(dataset_root: Path) -> Path | None:
    """ICDAR2015 layout: ``vocabularies/`` beside (or inside) the det_test folder."""
    for candidate in (dataset_root / "vocabularies", dataset_root.parent / "vocabularies"):
        if candidate.is_dir():
            return candidate
    return None


def _lexicons(
    names: list[str], vocab_dir: Path | None, dataset_root: Path, snap: str
) -> dict[str, Lexicon | None]:
    needed = [n for n in names if n != "none"]
    if needed:
        vocab_dir = vocab_dir or default_vocab_dir(dataset_root)
        if vocab_dir is None:
            raise OcrQuantError("no vocabularies/ folder beside the dataset; pass --vocab-dir", dataset_root)
    return {n: None if n == "none" else load_lexicon(n, vocab_dir, snap=snap) for n in names}  # type: ignore[arg-type]


def evaluate_e2e(
    pipeline: OcrPipeline,
    dataset: Dataset,
    lexicon: str | Sequence[str] | None = None,
    *,
    vocab_dir: str | Path | None = None,
    snap: str = "letters",
    limit: int | None = None,
    output: str | Path | None = None,
    progress: bool = True,
    keep_samples: bool = True,
    extra_settings: dict[str, Any] | None = None,
) -> E2EResult:
    """Run ``pipeline`` over the det ``dataset`` and score it end to end for each lexicon setting
    (``None``/"none", "strong", "weak", "generic", "all" or a list); resumable through ``output``.
    ``snap`` says which recognised words a lexicon replaces (see :mod:`ocrquant.metrics.e2e`)."""
    names = parse_lexicons(lexicon)
    lexicons = _lexicons(names, Path(vocab_dir) if vocab_dir else None, dataset.root, snap)
    samples = dataset.samples[:limit] if limit else dataset.samples
    if not samples:
        raise OcrQuantError("dataset has no samples", dataset.root)
    if not isinstance(samples[0].target, DetTarget):
        raise OcrQuantError("end-to-end evaluation needs a det dataset with transcriptions", dataset.root)
    settings = {
        "task": "e2e",
        "snap": snap,
        "data": str(dataset.root),
        "format": dataset.format,
        "limit": limit,
        **pipeline.describe(),
        **(extra_settings or {}),
    }
    output = Path(output) if output else None
    if output is not None:  # resume only the same model files on the same data (see resume_key)
        settings.update(resume_key(samples, dataset.root))
        settings["model_sha256"] = {
            name: file_fingerprint(stage["path"]) for name, stage in settings["models"].items()
        }
    partial = PartialLog(output.with_suffix(".partial.jsonl") if output else None, settings)
    todo = [s for s in samples if s.key not in partial.done]
    t0 = time.perf_counter()
    bar = progress_bar(len(samples), len(samples) - len(todo), progress, "e2e")
    completed = False
    try:
        for sample in todo:
            try:
                image = load_image(sample)
            except OcrQuantError as exc:
                log.warning("skipped: %s", exc)
                partial.add({"key": sample.key, "error": str(exc), "skipped": True})
                bar.update(1)
                continue
            result = pipeline.run(image)
            prediction = result.to_prediction()
            prediction["cls"] = [[line.cls_label, line.cls_score] for line in result.lines]
            partial.add({"key": sample.key, "prediction": prediction, "timing_ms": result.timing_ms})
            bar.update(1)
        completed = True
    finally:
        bar.close()
        partial.close(remove=False)
    wall_s = time.perf_counter() - t0
    result = _summarise(samples, partial.done, lexicons, settings, dataset, wall_s, len(todo))
    if not keep_samples:
        result.samples = []
    partial.finish(output, result.to_json(), completed)
    return result


def _summarise(
    samples: list,
    done: dict[str, dict[str, Any]],
    lexicons: dict[str, Lexicon | None],
    settings: dict[str, Any],
    dataset: Dataset,
    wall_s: float,
    n_run: int,
) -> E2EResult:
    metrics = {name: E2EMetric(lex) for name, lex in lexicons.items()}
    per_sample, skipped = [], []
    stage_ms: dict[str, list[float]] = {k: [] for k in TIMED_STAGES}
    for s in samples:
        rec = done[s.key]
        if rec.get("skipped"):
            skipped.append({"key": s.key, "error": rec["error"]})
            continue
        prediction = {**rec["prediction"], "key": s.key}
        figures = {name: m.update(prediction, s.target) for name, m in metrics.items()}
        for k in TIMED_STAGES:
            stage_ms[k].append(float(rec.get("timing_ms", {}).get(k, 0.0)))
        per_sample.append(
            {
                "key": s.key,
                "prediction": rec["prediction"],
                "timing_ms": rec.get("timing_ms"),
                "figures": figures,
            }
        )
    total = np.asarray(stage_ms["total"]) if stage_ms["total"] else np.zeros(1)
    timing = {
        "wall_s": round(wall_s, 3),
        "images_evaluated_now": n_run,
        "latency_ms_mean": round(float(total.mean()), 3),
        "latency_ms_p50": round(float(np.percentile(total, 50)), 3),
        "latency_ms_p90": round(float(np.percentile(total, 90)), 3),
        "stage_ms_mean": {
            k: round(float(np.mean(v)), 3) if v else 0.0 for k, v in stage_ms.items() if k != "total"
        },
    }
    return E2EResult(
        str(dataset.root), {name: m.result() for name, m in metrics.items()}, len(per_sample), skipped,
        timing, settings, per_sample,
    )  # fmt: skip


@dataclass(frozen=True)
class E2EScoring:
    """How end-to-end results are scored: the lexicon(s) a recognised word may snap to (ICDAR2015's
    protocol), how it snaps, and how many images."""

    lexicon: str | Sequence[str] | None = None
    vocab_dir: str | Path | None = None
    snap: str = "letters"
    limit: int | None = None
    progress: bool = True


@dataclass(frozen=True)
class ChainSpec:
    """The three stage models (zoo names or .onnx paths; cls None: no direction classifier), the
    precision zoo names resolve to, and det's and rec's task options."""

    det: str | Path = DEFAULT_CHAIN["det"]
    cls: str | Path | None = DEFAULT_CHAIN["cls"]
    rec: str | Path = DEFAULT_CHAIN["rec"]
    precision: str = "fp32"
    det_options: dict[str, Any] | None = None
    rec_options: dict[str, Any] | None = None


def eval_e2e(
    data: str | Path,
    chain: ChainSpec | None = None,
    scoring: E2EScoring | None = None,
    *,
    data_format: str | None = None,
    output: str | Path | None = None,
    config: PipelineConfig | None = None,
    backend: str = "onnxruntime",
    runtime: Any = None,
) -> E2EResult:
    """Build the pipeline from model specs, open the det dataset in ``data`` and run
    :func:`evaluate_e2e` (the one call ``ocrquant e2e`` and ``eval --task e2e`` need)."""
    c, sc = chain or ChainSpec(), scoring or E2EScoring()
    pipeline = build_pipeline(
        c.det, c.cls, c.rec, precision=c.precision, config=config, backend=backend, runtime=runtime,
        det_options=c.det_options, rec_options=c.rec_options,
    )  # fmt: skip
    dataset = open_dataset(Path(data), "det", data_format)
    return evaluate_e2e(
        pipeline, dataset, sc.lexicon, vocab_dir=sc.vocab_dir, snap=sc.snap, limit=sc.limit, output=output,
        progress=sc.progress, extra_settings={"backend": backend, "size_mb": round(pipeline.size_mb, 3)},
    )  # fmt: skip


CHAIN_ROWS: tuple[tuple[str, dict[str, str]], ...] = (
    ("fp32", {"det": "fp32", "cls": "fp32", "rec": "fp32"}),
    ("det-int8", {"det": "int8", "cls": "fp32", "rec": "fp32"}),
    ("cls-int8", {"det": "fp32", "cls": "int8", "rec": "fp32"}),
    ("rec-int8", {"det": "fp32", "cls": "fp32", "rec": "int8"}),
    ("all-int8", {"det": "int8", "cls": "int8", "rec": "int8"}),
)


@dataclass(frozen=True)
class ChainModels:
    """Each stage's FP32 and INT8 model (zoo names or .onnx paths); no cls: both None."""

    det_fp32: str | Path
    det_int8: str | Path
    cls_fp32: str | Path | None
    cls_int8: str | Path | None
    rec_fp32: str | Path
    rec_int8: str | Path


def chain_report(
    models: ChainModels,
    dataset: Dataset,
    scoring: E2EScoring | None = None,
    *,
    output_dir: str | Path | None = None,
    config: PipelineConfig | None = None,
    backend: str = "onnxruntime",
    runtime: Any = None,
    stage_options: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Where does INT8 cost end-to-end accuracy? Five chains over the same images: all FP32, each stage
    INT8 alone, all INT8 (without a cls model, the cls-int8 row is left out). Models are given as zoo
    names or .onnx paths (INT8 ones as paths, or zoo names whose INT8 model is cached); each is loaded
    once and shared by the rows. A row: name, the precision per stage, e2e figures per lexicon
    (``precision``/``recall``/``hmean`` are the first lexicon's), mean / p50 per-image pipeline latency,
    per-stage mean ms and total model size MB. With ``output_dir`` each row keeps a resumable
    ``<row>.json``."""

    m, sc = models, scoring or E2EScoring()
    cls_fp32 = m.cls_fp32
    specs = {
        "det": (m.det_fp32, m.det_int8),
        "cls": (m.cls_fp32, m.cls_int8),
        "rec": (m.rec_fp32, m.rec_int8),
    }
    if (m.cls_fp32 is None) != (m.cls_int8 is None):
        raise OcrQuantError("give both cls models (FP32 and INT8) or neither")
    stage_options = stage_options or {}
    loaded: dict[tuple[str, str], StageModel] = {}
    for stage in STAGES:
        fp32, int8 = specs[stage]
        if fp32 is None:
            continue
        for precision, spec in (("fp32", fp32), ("int8", int8)):
            # An explicit path is used as given; a zoo name with "int8" looks up the cached INT8 model.
            loaded[(stage, precision)] = load_stage(
                spec, stage, precision=precision, backend=backend, runtime=runtime,
                task_options=stage_options.get(stage),
            )  # fmt: skip
    rows = []
    out_dir = Path(output_dir) if output_dir else None
    for row_name, precisions in CHAIN_ROWS:
        if cls_fp32 is None and row_name == "cls-int8":
            continue
        stages = {s: loaded[(s, p)] for s, p in precisions.items() if (s, p) in loaded}
        pipeline = OcrPipeline.from_stages(stages["det"], stages.get("cls"), stages["rec"], config)
        result = evaluate_e2e(
            pipeline, dataset, sc.lexicon, vocab_dir=sc.vocab_dir, snap=sc.snap, limit=sc.limit,
            output=out_dir / f"{row_name}.json" if out_dir else None, progress=sc.progress,
            keep_samples=False,
            extra_settings={"chain_row": row_name},
        )  # fmt: skip
        first = next(iter(result.metrics.values()))
        rows.append({
            "row": row_name,
            "precisions": {s: p for s, p in precisions.items() if s in stages},
            "models": {s: str(m.path) for s, m in stages.items()},
            "precision": first["precision"],
            "recall": first["recall"],
            "hmean": first["hmean"],
            "metrics": result.metrics,
            "latency_ms_mean": result.timing["latency_ms_mean"],
            "latency_ms_p50": result.timing["latency_ms_p50"],
            "stage_ms_mean": result.timing["stage_ms_mean"],
            "size_mb": round(pipeline.size_mb, 3),
            "images": result.count,
        })  # fmt: skip
    return rows
