"""ocrquant vs the stock quantizers (onnxruntime ``quantize_static``, NNCF) on the same calibration data.

Acceptance check of the "Quantize" issue: for each PP-OCRv3 zoo model (det, cls, rec) this makes INT8
models with
  * onnxruntime ``quantize_static`` (QDQ, per-channel, MinMax / Entropy / Percentile), each with the stock
    default activations (QInt8) and with QUInt8 activations (S8 activations do not fuse into QLinearConv
    on this x86 build, U8 do), after onnxruntime's recommended preparation;
  * NNCF ``nncf.quantize`` on the ONNX model, preset MIXED (``pip install nncf==3.4.0``: the bench extra);
  * ocrquant ``ocrquant.tuning.quantize`` with the default ``QuantConfig``;
then evaluates every model (and FP32) with ocrquant's evaluator on the test split and times them
interleaved (``interleaved_latency``: FP32 and all INT8 models of one task in turn, spinning off), and
prints one table plus, per task, "ocrquant's drop <= best stock drop?" and "ocrquant INT8 faster than FP32?".

Calibration is always the *training* split (det_train for det, rec_train for rec and for cls derived from
it), never the test split. The stock quantizers and NNCF get the same N images (``--calib-size``, draw
``--seed``, default 0; ``--variants`` builds only the rows named).
ocrquant gets what a user gives ``ocrquant quantize``: the calibration directory and the default
``QuantConfig`` (200 images calibrate; ``--method auto`` scores its candidates on other images of that
directory: rec/cls up to 2000 crops, det 60 images, so det calibrates on 140). Stock tools have no such
held-out step, which is part of what is compared.
Preparation for the stock quantizer: opset 13 (per-channel QDQ needs it) then
``quant_pre_process``; symbolic shape inference fails on these dynamic-shape models, so the ladder falls
back to ``quant_pre_process(skip_symbolic_shape=True)`` and then to onnxruntime's ORT_ENABLE_BASIC
optimiser; the table says which rung each row used. The stock histogram calibrators (Entropy, Percentile)
concatenate tensors across images and crash on inputs of different sizes, so the stock quantizer is fed
fixed-size inputs: det resized to 544x960 (ICDAR2015's 1280x720 frames get that size anyway), rec resized
and padded to 48x320 (wider crops squeezed), cls 48x192 (its normal size). Stock calibration runs in
strides (``CalibStridedMinMax``, stock option) so that histograms of 100 det images fit in memory.
NNCF and ocrquant get the inputs the model sees at inference (one image per call).

Run (resumable: a quantized model or evaluation whose output exists is reused):
  python benchmarks/vs_stock.py --tasks det --limit 100 --out runs/vs-stock
Outputs: OUT/<task>/*.onnx, OUT/<task>/eval/*.json, OUT/<task>/results.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import version_converter
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from ocrquant.api import build_task, eval_model
from ocrquant.data import Sample, load_image, open_dataset, sample_calibration
from ocrquant.evaluation.significance import paired_delta_interval
from ocrquant.fileio import atomic_path, write_json_atomic
from ocrquant.metrics.base import Metric
from ocrquant.quantization import QuantConfig
from ocrquant.runtime import RuntimeOptions
from ocrquant.runtime.timing import interleaved_latency
from ocrquant.tasks.cls import resize_norm_pad
from ocrquant.tuning import quantize
from ocrquant.zoo.resolve import resolve_model

SHARED = Path(__file__).resolve().parents[2] / "shared/data/icdar2015"
log = logging.getLogger("vs_stock")


@dataclass(frozen=True)
class Job:
    """One task of the comparison: zoo model, calibration split, test split, defaults."""

    model: str
    calib: str
    test: str
    calib_size: int
    fixed_hw: tuple[int, int]  # input size fed to the stock calibrators
    latency_images: int


JOBS = {
    "det": Job("ppocrv3-det", "det_train", "det_test", 100, (544, 960), 3),
    "cls": Job("ppocrv3-cls", "rec_train", "rec_test", 200, (48, 192), 16),
    "rec": Job("ppocrv3-rec", "rec_train", "rec_test", 200, (48, 320), 16),
}
STOCK_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
STOCK_ACTS = {"s8": QuantType.QInt8, "u8": QuantType.QUInt8}


@dataclass
class Row:
    variant: str
    quantizer: str
    path: Path
    prep: str = ""
    note: str = ""
    metric: float | None = None
    metric_name: str = ""
    ms: float | None = None
    size_mb: float = 0.0
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)  # per-sample figures (not written)


# ------------------------------------------------------------------------------------------ calibration


class _StridedReader(CalibrationDataReader):
    """Stock data reader with ``__len__``/``set_range`` so ``CalibStridedMinMax`` can feed it in strides."""

    def __init__(self, name: str, arrays: list[np.ndarray]) -> None:
        self._feeds = [{name: a} for a in arrays]
        self.set_range(0, len(self._feeds))

    def __len__(self) -> int:
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self._feeds[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def fixed_inputs(task_name: str, job: Job, samples: list[Sample]) -> list[np.ndarray]:
    """Stock-calibrator inputs: every image at ``job.fixed_hw`` (histogram calibrators need one shape)."""
    h, w = job.fixed_hw
    if task_name == "det":
        task = build_task("det", resolve_model(job.model), {"input_shape": (h, w)})
        return [task.preprocess([load_image(s)]).inputs for s in samples]
    return [resize_norm_pad(load_image(s), h, w)[None] for s in samples]


def natural_inputs(task_name: str, job: Job, samples: list[Sample]) -> list[np.ndarray]:
    """The inputs the model sees at inference with ocrquant's preprocessing (one image per call)."""
    task = build_task(task_name, resolve_model(job.model), {})
    return [task.preprocess([load_image(s)]).inputs for s in samples]


def stride_for(n: int, target: int) -> int:
    """Largest divisor of ``n`` not above ``target`` (``CalibStridedMinMax`` needs an exact division)."""
    return max(d for d in range(1, min(n, target) + 1) if n % d == 0)


# ------------------------------------------------------------------------------------------ stock ORT


def _to_opset13(src: Path, dst: Path) -> None:
    model = onnx.load(str(src))
    if max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 13:
        model = version_converter.convert_version(model, 13)
    onnx.save(model, str(dst))


def _ort_basic(src: Path, dst: Path) -> None:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])


PREP_LADDER: dict[str, Callable[[Path, Path], None]] = {
    "opset13+quant_pre_process": lambda s, d: quant_pre_process(str(s), str(d)),
    "opset13+quant_pre_process(skip_symbolic_shape)": lambda s, d: quant_pre_process(
        str(s), str(d), skip_symbolic_shape=True
    ),
    "opset13+ORT_ENABLE_BASIC": _ort_basic,
}


def stock_prepare(fp32: Path, out_dir: Path) -> tuple[Path, str, list[str]]:
    """Stock preparation, first rung that works; returns (prepared model, rung name, failures)."""
    prepared = out_dir / "stock_prepared.onnx"
    meta = out_dir / "stock_prepared.json"
    if prepared.exists() and meta.exists():
        info = json.loads(meta.read_text())
        return prepared, info["prep"], info["failures"]
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="vs-stock-") as tmp:
        m13 = Path(tmp) / "opset13.onnx"
        _to_opset13(fp32, m13)
        for name, step in PREP_LADDER.items():
            try:
                with atomic_path(prepared) as dst:
                    step(m13, dst)
                    onnx.checker.check_model(str(dst))
            except Exception as exc:  # noqa: BLE001 - the point is to record which rung fails and why
                msg = f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
                print(f"  stock preparation failed -> {msg}", flush=True)
                failures.append(msg)
                continue
            write_json_atomic(meta, {"prep": name, "failures": failures})
            return prepared, name, failures
    raise RuntimeError("every stock preparation failed: " + "; ".join(failures))


def copy_metadata(src: Path, dst: Path) -> None:
    """Carry the float model's metadata (rec: the character dictionary) into a quantized model."""
    props = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    model = onnx.load(str(dst))
    have = {p.key for p in model.metadata_props}
    missing = {k: v for k, v in props.items() if k not in have}
    if missing:
        onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **missing})
        with atomic_path(dst) as tmp:
            onnx.save(model, str(tmp))


def stock_quantize(prepared: Path, out: Path, arrays: list[np.ndarray], method: str, act: str) -> None:
    name = onnx.load(str(prepared), load_external_data=False).graph.input[0].name
    stride = stride_for(len(arrays), 5 if arrays[0].size > 1_000_000 else 50)
    with atomic_path(out) as tmp:
        quantize_static(
            str(prepared),
            str(tmp),
            _StridedReader(name, arrays),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=STOCK_ACTS[act],
            weight_type=QuantType.QInt8,
            calibrate_method=STOCK_METHODS[method],
            extra_options={"CalibStridedMinMax": stride},
        )


# ------------------------------------------------------------------------------------------ NNCF


def nncf_quantize(fp32: Path, out: Path, arrays: list[np.ndarray]) -> None:
    """NNCF post-training quantization of the ONNX model (opset 13), preset MIXED, all images."""
    import nncf

    with tempfile.TemporaryDirectory(prefix="vs-stock-") as tmp:
        m13 = Path(tmp) / "opset13.onnx"
        _to_opset13(fp32, m13)
        model = onnx.load(str(m13))
        name = model.graph.input[0].name
        dataset = nncf.Dataset(arrays, lambda x: {name: x})
        q = nncf.quantize(model, dataset, preset=nncf.QuantizationPreset.MIXED, subset_size=len(arrays))
        with atomic_path(out) as dst:
            onnx.save(q, str(dst))


# ------------------------------------------------------------------------------------------ driver


def wanted(args: argparse.Namespace, variant: str) -> bool:
    """Whether ``--variants`` (empty: all) asks for this row."""
    return not args.variants or variant in args.variants


def build_models(task_name: str, job: Job, args: argparse.Namespace, out_dir: Path) -> list[Row]:
    fp32 = Path(resolve_model(job.model).path)
    calib_set = open_dataset(args.shared / job.calib, task_name)
    samples = sample_calibration(calib_set, args.calib_size or job.calib_size, seed=args.seed)
    print(
        f"[{task_name}] calibration: {len(samples)} samples of {calib_set.root} (seed {args.seed})",
        flush=True,
    )
    rows = [Row("fp32", "FP32", fp32, size_mb=fp32.stat().st_size / 1e6)]
    fixed: list[np.ndarray] | None = None
    natural: list[np.ndarray] | None = None

    prepared, prep, failures = stock_prepare(fp32, out_dir)
    print(f"[{task_name}] stock preparation used: {prep}", flush=True)
    for method in STOCK_METHODS:
        for act in STOCK_ACTS:
            out = out_dir / f"ort-{method}-{act}.onnx"
            row = Row(
                f"ort-{method}-{act}",
                f"ORT {method} A{act.upper()}/WS8",
                out,
                prep=prep,
                note=f"fixed {job.fixed_hw[0]}x{job.fixed_hw[1]} calib inputs",
                extra={"prep_failures": failures},
            )
            if not wanted(args, row.variant):
                continue
            rows.append(row)
            if out.exists():
                continue
            t = time.perf_counter()
            try:
                fixed = fixed if fixed is not None else fixed_inputs(task_name, job, samples)
                stock_quantize(prepared, out, fixed, method, act)
                copy_metadata(fp32, out)
                print(f"[{task_name}] {row.variant}: {time.perf_counter() - t:.0f} s", flush=True)
            except Exception as exc:  # noqa: BLE001 - a failing quantizer is a result, not a stop
                row.error = f"{type(exc).__name__}: {exc}"[:300]
                traceback.print_exc()

    out = out_dir / "nncf-mixed.onnx"
    row = Row("nncf-mixed", "NNCF MIXED", out, prep="opset13", note="inference-size calib inputs")
    if wanted(args, row.variant):
        rows.append(row)
    if wanted(args, row.variant) and not out.exists():
        t = time.perf_counter()
        try:
            natural = natural if natural is not None else natural_inputs(task_name, job, samples)
            nncf_quantize(fp32, out, natural)
        except Exception as exc:  # noqa: BLE001
            print(f"[{task_name}] NNCF failed on inference-size inputs ({exc!r}); retrying with fixed size")
            try:
                fixed = fixed if fixed is not None else fixed_inputs(task_name, job, samples)
                nncf_quantize(fp32, out, fixed)
                row.note = f"fixed {job.fixed_hw[0]}x{job.fixed_hw[1]} calib inputs"
            except Exception as exc2:  # noqa: BLE001
                row.error = f"{type(exc2).__name__}: {exc2}"[:300]
                traceback.print_exc()
        if out.exists():
            copy_metadata(fp32, out)
            print(f"[{task_name}] nncf-mixed: {time.perf_counter() - t:.0f} s", flush=True)

    out = out_dir / "ocrquant.onnx"
    row = Row("ocrquant", "ocrquant default", out, prep="ocrquant", note="calib dir, default config")
    if wanted(args, row.variant):
        rows.append(row)
    if wanted(args, row.variant) and not out.exists():
        t = time.perf_counter()
        try:
            quantize(
                resolve_model(job.model),
                task_name,
                calib_set,
                out,
                QuantConfig(seed=args.seed, progress=False),
            )
            print(f"[{task_name}] ocrquant: {time.perf_counter() - t:.0f} s", flush=True)
        except Exception as exc:  # noqa: BLE001
            row.error = f"{type(exc).__name__}: {exc}"[:300]
            traceback.print_exc()
    for r in rows:
        if r.path.exists():
            r.size_mb = r.path.stat().st_size / 1e6
    return rows


def evaluate_and_time(
    task_name: str, job: Job, rows: list[Row], args: argparse.Namespace, out_dir: Path
) -> None:
    test_root = args.shared / job.test
    runtime = RuntimeOptions(threads=args.threads, spinning=False)
    live = [r for r in rows if r.path.exists() and not r.error]
    for r in live:
        print(f"[{task_name}] eval {r.variant}", flush=True)
        try:
            res = eval_model(
                r.path,
                test_root,
                task=task_name,
                limit=args.limit,
                runtime=runtime,
                output=out_dir / "eval" / f"{r.variant}.json",
                progress=False,
            )
            r.metric, r.metric_name = res.primary, res.settings["primary_metric"]
            r.extra["metrics"] = {k: v for k, v in res.metrics.items() if isinstance(v, int | float)}
            r.extra["count"] = res.count
            r.samples = res.samples
        except Exception as exc:  # noqa: BLE001
            r.error = f"eval {type(exc).__name__}: {exc}"[:300]
            traceback.print_exc()
    timed = [r for r in live if not r.error]
    test_set = open_dataset(test_root, task_name)
    inputs = natural_inputs(task_name, job, test_set.samples[: args.latency_images or job.latency_images])
    print(
        f"[{task_name}] interleaved latency: {len(timed)} models x {len(inputs)} inputs x "
        f"{args.rounds} rounds, {args.threads} threads",
        flush=True,
    )
    lat = interleaved_latency(
        {r.variant: r.path for r in timed}, inputs, threads=args.threads, rounds=args.rounds
    )
    for r in timed:
        r.ms = lat[r.variant].median_ms
        r.extra["latency"] = vars(lat[r.variant])


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _interval(metric: Metric, a: Row, b: Row) -> str:
    """Paired bootstrap 95 % interval of ``b - a`` in points, over the same test samples."""
    iv = paired_delta_interval(metric, a.samples, b.samples)
    return "-" if iv is None else f"{100 * iv['low']:+.2f}..{100 * iv['high']:+.2f} pt"


def table(results: dict[str, list[Row]]) -> str:
    head = [
        "model",
        "quantizer",
        "prep",
        "metric",
        "delta vs FP32",
        "95 % interval",
        "ms",
        "speed-up vs FP32",
        "size MB",
        "note",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    verdicts = []
    for task_name, rows in results.items():
        base = rows[0]
        task_metric = build_task(task_name, resolve_model(JOBS[task_name].model)).new_metric()
        for r in rows:
            delta = None if r.metric is None or base.metric is None else r.metric - base.metric
            speed = None if r.ms is None or base.ms is None else base.ms / r.ms
            metric = f"{r.metric_name} {r.metric:.4f}" if r.metric is not None else "-"
            note = r.note if not r.error else f"FAILED: {r.error[:80]}"
            lines.append(
                f"| {JOBS[task_name].model} | {r.quantizer} | {r.prep or '-'} | {metric} | "
                f"{_fmt(delta, '+.4f')} | {_interval(task_metric, base, r) if r is not base else '-'} | "
                f"{_fmt(r.ms, '.2f')} | {_fmt(speed, '.2f')}x | {r.size_mb:.2f} | {note} |"
            )
        ours = next((r for r in rows if r.variant == "ocrquant"), None)
        stock = [r for r in rows[1:] if r.variant != "ocrquant" and r.metric is not None]
        if ours is None or ours.metric is None or base.metric is None or not stock:
            verdicts.append(f"{task_name}: incomplete (missing ocrquant, FP32 or stock results)")
            continue
        best = max(stock, key=lambda r: r.metric or 0.0)
        ours_drop, best_drop = base.metric - ours.metric, base.metric - (best.metric or 0.0)
        faster = ours.ms is not None and base.ms is not None and ours.ms < base.ms
        verdicts.append(
            f"{task_name}: ocrquant's drop <= best stock drop? "
            f"{'YES' if ours_drop <= best_drop + 1e-12 else 'NO'} "
            f"(drop = FP32 - INT8: ocrquant {ours_drop:+.4f}, best stock {best.quantizer} {best_drop:+.4f}; "
            f"ocrquant - best stock, paired 95 % interval {_interval(task_metric, best, ours)}); "
            f"ocrquant INT8 faster than FP32? {'YES' if faster else 'NO'} "
            f"({_fmt(ours.ms, '.2f')} ms vs {_fmt(base.ms, '.2f')} ms)"
        )
    return "\n".join(lines + [""] + verdicts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=SHARED, help="the icdar2015 folder")
    ap.add_argument("--tasks", default="det,cls,rec", help="comma list of det, cls, rec")
    ap.add_argument(
        "--calib-size",
        type=int,
        default=0,
        help="stock and NNCF calibration images (0: 100 det, 200 rec/cls)",
    )
    ap.add_argument(
        "--seed",
        type=int,
        default=0,
        help="calibration draw: the stock/NNCF sample and ocrquant's QuantConfig.seed (its split and pick)",
    )
    ap.add_argument(
        "--variants",
        type=lambda v: [x.strip() for x in v.split(",") if x.strip()],
        default=[],
        help="only these rows besides FP32, e.g. ort-entropy-u8,ocrquant (default: all)",
    )
    ap.add_argument("--limit", type=int, default=None, help="first N test samples only (quick runs)")
    ap.add_argument("--out", type=Path, default=Path("runs/vs-stock"), help="models, evaluations, results")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads for evaluation and timing")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved latency rounds (after 1 warm-up)")
    ap.add_argument("--latency-images", type=int, default=0, help="test inputs timed (0: 3 det, 16 rec/cls)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in JOBS]
    if unknown:
        ap.error(f"unknown task(s) {unknown}; choose from {list(JOBS)}")
    rows = [f"ort-{m}-{a}" for m in STOCK_METHODS for a in STOCK_ACTS] + ["nncf-mixed", "ocrquant"]
    unknown = [v for v in args.variants if v not in rows]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; choose from {rows}")
    results: dict[str, list[Row]] = {}
    for task_name in tasks:
        job, out_dir = JOBS[task_name], args.out / task_name
        rows = build_models(task_name, job, args, out_dir)
        evaluate_and_time(task_name, job, rows, args, out_dir)
        results[task_name] = rows
        write_json_atomic(
            out_dir / "results.json",
            {
                "command": vars(args) | {"shared": str(args.shared), "out": str(args.out)},
                "ort": ort.__version__,
                "rows": [
                    {k: v for k, v in vars(r).items() if k != "samples"} | {"path": str(r.path)} for r in rows
                ],
            },
        )
    print()
    print(table(results))


if __name__ == "__main__":
    main()
