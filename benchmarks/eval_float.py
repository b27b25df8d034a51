"""Full ICDAR2015 float evaluation of the three zoo models, checked against the reference figures.

Run: python benchmarks/eval_float.py [--shared ../shared/data/icdar2015] [--out runs/bench-float]
Prints one table: our figure, the reference (an independent PaddleOCR-semantics implementation run
on the same models and data), and the difference in points; plus evaluation wall time vs model time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ocrquant.api import eval_model
from ocrquant.runtime import RuntimeOptions

REFERENCE = {
    ("det", "precision"): 0.5574,
    ("det", "recall"): 0.3414,
    ("det", "hmean"): 0.4234,
    ("cls", "acc"): 0.7376,
    ("rec", "acc"): 0.6086,
    ("rec", "acc_ci_alnum"): 0.6432,
    ("rec", "norm_edit_sim"): 0.8217,
}
RUNS = [
    ("det", "ppocrv3-det", "det_test"),
    ("cls", "ppocrv3-cls", "rec_test"),
    ("rec", "ppocrv3-rec", "rec_test"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/icdar2015"
    )
    ap.add_argument("--out", type=Path, default=Path("runs/bench-float"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print(f"{'task':5} {'metric':14} {'ours':>8} {'ref':>8} {'diff pt':>8}")
    for task, model, folder in RUNS:
        res = eval_model(
            model,
            args.shared / folder,
            task=task,
            output=args.out / f"{task}.json",
            runtime=RuntimeOptions(threads=args.threads),
        )
        for (t, metric), ref in REFERENCE.items():
            if t == task:
                ours = res.metrics[metric]
                print(f"{task:5} {metric:14} {ours:8.4f} {ref:8.4f} {100 * (ours - ref):+8.2f}")
        tm = res.timing
        print(
            f"{task:5} {'samples':14} {res.count:8d}   wall {tm['wall_s']:.1f}s, model {tm['model_s']:.1f}s, "
            f"wall/model {tm['wall_s'] / max(tm['model_s'], 1e-9):.3f}"
        )


if __name__ == "__main__":
    main()
