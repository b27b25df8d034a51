"""Deltas of saved evaluations against FP32 and against each other, each with its paired 95 % interval.

Why: comparisons across runs (calibration draws, quantizers built by different scripts) should not
re-evaluate anything, and a difference between two INT8 models is only meaningful with the interval
of the paired difference (the same test images), which the two deltas' own intervals do not give.
Evaluation JSONs are what ``ocrquant eval --output``, ``benchmarks/vs_stock.py`` (OUT/TASK/eval/) and
``benchmarks/distill_draws.py`` write; each must hold its per-sample figures.

  python benchmarks/paired_deltas.py --fp32 runs/vs-stock-s17/det/eval/fp32.json \\
      ocrquant=runs/det-distill-draws/seed1.distill-1.test.json \\
      entropy-u8=runs/vs-stock-s18-seed1/det/eval/ort-entropy-u8.json

Rows print in the order given; "vs first" is the row minus the first row.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ocrquant.errors import OcrQuantError, run_script
from ocrquant.evaluation.evaluate import EvalResult
from ocrquant.evaluation.significance import paired_delta_interval
from ocrquant.tasks.base import get_task_class


def load(path: Path) -> EvalResult:
    """A saved evaluation with per-sample figures, or a one-line error naming the file."""
    result = EvalResult.read(path)
    if not result.samples:
        raise OcrQuantError("the evaluation holds no per-sample figures to pair", path)
    return result


def interval(task: str, a: EvalResult, b: EvalResult) -> str:
    """``b - a`` in points with its paired bootstrap 95 % interval."""
    iv = paired_delta_interval(get_task_class(task)().new_metric(), a.samples, b.samples)
    delta = f"{100 * (b.primary - a.primary):+.2f}"
    return delta if iv is None else f"{delta} ({100 * iv['low']:+.2f}..{100 * iv['high']:+.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fp32", type=Path, required=True, help="the FP32 model's evaluation JSON")
    ap.add_argument("models", nargs="+", help="NAME=PATH of each INT8 model's evaluation JSON")
    args = ap.parse_args()
    pairs = []
    for spec in args.models:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise OcrQuantError(f"expected NAME=PATH, got '{spec}'")
        pairs.append((name, Path(path)))
    fp32 = load(args.fp32)
    rows = [(name, load(path)) for name, path in pairs]
    task = fp32.task
    for (name, res), (_, path) in zip(rows, pairs, strict=True):
        if res.task != task or res.count != fp32.count:
            msg = f"{name}: a {res.task} evaluation of {res.count} samples, FP32's is {task} of {fp32.count}"
            raise OcrQuantError(msg, path)
    metric = fp32.settings.get("primary_metric", "metric")
    print(f"{task}, {fp32.count} samples, FP32 {metric} {fp32.primary:.4f}; points, paired 95 % intervals")
    print(f"| model | {metric} | vs FP32 | vs {rows[0][0]} |")
    print("|---|---|---|---|")
    for name, res in rows:
        first = "-" if res is rows[0][1] else interval(task, rows[0][1], res)
        print(f"| {name} | {res.primary:.4f} | {interval(task, fp32, res)} | {first} |")


if __name__ == "__main__":
    run_script(main)
