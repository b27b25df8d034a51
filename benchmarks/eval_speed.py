"""Evaluation overhead: full ICDAR2015 det evaluation wall time vs the pure model-inference time inside it.

Run: python benchmarks/eval_speed.py [--shared ../shared/data/icdar2015] [--threads 2]
One run of ``evaluate`` (FP32, onnxruntime, 500 test images, max side 960) reports both ``timing.wall_s``
and ``timing.model_s``; prints wall/model and checks the acceptance wall <= 1.25 x model. No output file
is written (a fresh run every time, never a resumed one, or the timing would not be of one run).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ocrquant.api import eval_model
from ocrquant.runtime import RuntimeOptions

SHARED = Path(__file__).resolve().parents[2] / "shared/data/icdar2015"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--model", default="ppocrv3-det")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    res = eval_model(
        args.model,
        args.shared / "det_test",
        task="det",
        backend=args.backend,
        limit=args.limit,
        runtime=RuntimeOptions(threads=args.threads),
        progress=False,
    )
    tm = res.timing
    ratio = tm["wall_s"] / max(tm["model_s"], 1e-9)
    print(
        f"det {res.model} on {res.count} images ({args.backend}, {args.threads} threads): hmean "
        f"{res.metrics['hmean']:.4f}"
    )
    print(
        f"wall {tm['wall_s']:.1f} s, model {tm['model_s']:.1f} s, wall/model {ratio:.3f} "
        f"(need <= 1.25: {'PASS' if ratio <= 1.25 else 'FAIL'}); load avg {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
