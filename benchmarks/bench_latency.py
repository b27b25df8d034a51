"""INT8/FP32 latency per backend per model, all four cases interleaved in one run per task.

Run: python benchmarks/bench_latency.py [--int8-det M] [--int8-rec M] [--int8-cls M] [--rounds 15]
Cases: onnxruntime FP32 (the baseline), onnxruntime INT8, OpenVINO FP32, OpenVINO INT8, on the zoo
PP-OCRv3 models at the tasks' real sizes (det 544x960 and 512x896; rec 48x320 b1/b8; cls 48x192 b1/b8),
inputs from the embedded sample images (or --data-det/--data-rec). Prints speed-up = baseline median /
case median, and the acceptance checks. The INT8 models default to runs/stock-int8/*.int8.onnx
(benchmarks/make_stock_int8.py); point --int8-* at ocrquant's quantized models to compare those.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ocrquant.analysis.bench import run_bench
from ocrquant.fileio import write_json_atomic

FP32 = {"det": "ppocrv3-det", "rec": "ppocrv3-rec", "cls": "ppocrv3-cls"}
# (task, shape, case backend, case precision) -> minimum speed-up over onnxruntime FP32
ACCEPT = {
    ("det", "544x960", "openvino", "int8"): 3.0,
    ("det", "544x960", "onnxruntime", "int8"): 1.8,
    ("rec", "48x320 b1", "openvino", "int8"): 3.0,
    ("rec", "48x320 b8", "openvino", "int8"): 3.0,
    ("rec", "48x320 b1", "onnxruntime", "int8"): 1.5,
    ("rec", "48x320 b8", "onnxruntime", "int8"): 1.5,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for task in FP32:
        ap.add_argument(f"--int8-{task}", type=Path, default=Path(f"runs/stock-int8/{task}.int8.onnx"))
    ap.add_argument("--tasks", nargs="+", default=["det", "rec", "cls"])
    ap.add_argument("--data-det", type=Path, default=None, help="det images (default: embedded sample)")
    ap.add_argument("--data-rec", type=Path, default=None, help="word crops (default: embedded sample)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--memory", action="store_true", help="also measure peak RSS per session")
    ap.add_argument("--json", type=Path, default=Path("runs/bench/latency.json"))
    args = ap.parse_args()
    out, checks = {}, []
    print(
        f"{'task':4} {'input':10} {'backend':12} {'prec':5} {'median ms':>10} {'p90 ms':>8} {'min ms':>8} "
        f"{'speed-up vs ORT FP32 (median)':>30} {'(min)':>6}"
    )
    for task in args.tasks:
        data = args.data_det if task == "det" else args.data_rec
        models = [FP32[task], getattr(args, f"int8_{task}")]
        res = run_bench(
            models,
            task,
            backends=["onnxruntime", "openvino"],
            data=data,
            threads=args.threads,
            rounds=args.rounds,
            memory=args.memory,
            progress=False,
        )
        out[task] = res.to_json()
        for r in sorted(res.rows, key=lambda r: (r.shape, r.backend != "onnxruntime", r.precision)):
            print(
                f"{task:4} {r.shape:10} {r.backend:12} {r.precision:5} {r.median_ms:10.2f} {r.p90_ms:8.2f} "
                f"{r.min_ms:8.2f} {r.speedup_vs_baseline:29.2f}x {r.min_speedup_vs_baseline:5.2f}x"
            )
            need = ACCEPT.get((task, r.shape, r.backend, r.precision))
            if need is not None:
                checks.append(
                    (
                        f"{r.backend} INT8 {task} {r.shape}",
                        r.speedup_vs_baseline,
                        need,
                        r.min_speedup_vs_baseline,
                    )
                )
    print("\nacceptance (speed-up of INT8 over onnxruntime FP32 by median, same run; min-based in brackets):")
    for name, got, need, got_min in checks:
        verdict = "PASS" if got >= need else "FAIL"
        print(f"  {name:32} {got:5.2f}x ({got_min:.2f}x)  need >= {need:.1f}x  {verdict}")
    write_json_atomic(
        args.json,
        {
            "results": out,
            "load_avg_at_end": os.getloadavg(),
            "checks": [
                {"case": n, "speedup": g, "speedup_min": m, "required": q, "pass": g >= q}
                for n, g, q, m in checks
            ],
        },
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
