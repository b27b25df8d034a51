"""FP32 vs INT8 model-call latency of the three PP-OCRv3 models on real ICDAR2015 test inputs.

Run: python benchmarks/int8_latency.py --int8-dir DIR [--tasks rec,cls]   (DIR holds det.int8.onnx,
rec.int8.onnx, cls.int8.onnx made by `ocrquant quantize`, or those of --tasks). FP32 and INT8 are
interleaved on the same inputs (det 544x960, rec 48x320 batch 1, cls 48x192), 2 threads, spinning
off; prints the speed-up.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ocrquant.api import build_task
from ocrquant.data import open_dataset
from ocrquant.evaluation.evaluate import preprocessed_inputs
from ocrquant.runtime.timing import interleaved_latency
from ocrquant.zoo.resolve import resolve_model

CASES = [("det", "ppocrv3-det", "det_test", 8), ("rec", "ppocrv3-rec", "rec_test", 40),
         ("cls", "ppocrv3-cls", "rec_test", 60)]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--int8-dir", type=Path, required=True)
    ap.add_argument(
        "--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/icdar2015"
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tasks", default="det,rec,cls", help="comma list: the models DIR holds")
    args = ap.parse_args()
    for task, name, folder, n in CASES:
        if task not in args.tasks.split(","):
            continue
        model = resolve_model(name)
        inputs = preprocessed_inputs(build_task(task, model), open_dataset(args.shared / folder, task), n)
        lat = interleaved_latency(
            {"fp32": model.path, "int8": args.int8_dir / f"{task}.int8.onnx"}, inputs,
            threads=args.threads, rounds=args.rounds,
        )  # fmt: skip
        f, q = lat["fp32"], lat["int8"]
        ratio = f.median_ms / q.median_ms
        print(f"{task}: fp32 {f.median_ms:.2f} ms, int8 {q.median_ms:.2f} ms, speed-up {ratio:.2f}x")


if __name__ == "__main__":
    main()
