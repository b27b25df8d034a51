"""FP32 and INT8 latency per model and backend, as ratios to onnxruntime FP32, batch 1 and 8.

For each chain (v6: PP-OCRv6 small det + v2.0 cls + PP-OCRv6 small rec; v3: PP-OCRv3) and task, the
float zoo model and the INT8 model ``benchmarks/icdar2015.py`` wrote into ``runs/<chain>/`` are timed
on every backend in one interleaved loop (``ocrquant bench``'s engine: 2 threads, onnxruntime
spinning off, OpenVINO with static shapes and an f32 precision hint). det at the size a 1280x720
frame gets under the model's preset, rec at 48x320 and cls at 48x192, each at batch 1 and 8.

  python benchmarks/speed.py [--chains v6 v3] [--backends onnxruntime openvino] [--rounds 10]

Prints the host's CPU and int8 instruction sets, a table per chain, and writes
``runs/speed/speed.json`` (read by ``benchmarks/results.py``). A model a backend cannot load is listed
with the backend's one-line reason instead of a time.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from icdar2015 import CHAINS, bench_shapes  # the chains and sizes of the INT8 models it made

from ocrquant.analysis.bench import run_bench
from ocrquant.errors import OcrQuantError, run_script
from ocrquant.fileio import write_json_atomic
from ocrquant.report.table import machine_description


def chain_rows(chain: str, args: argparse.Namespace) -> list[dict]:
    """Every (task, shape, precision, backend) of one chain: median ms and the ratio to ORT FP32."""
    rows = []
    for task, model in CHAINS[chain].items():
        int8 = args.runs / chain / f"{task}.int8.onnx"
        if not int8.is_file():
            raise OcrQuantError(f"no INT8 model: run python benchmarks/icdar2015.py --chain {chain}", int8)
        bench = run_bench(
            [model, int8], task, backends=args.backends, shapes=bench_shapes(chain, task), rounds=args.rounds,
            threads=args.threads, progress=False, memory=False,
        )  # fmt: skip
        for r in bench.rows:
            rows.append({"task": task, "model": model, "shape": r.shape, "precision": r.precision,
                         "backend": r.backend, "median_ms": r.median_ms,
                         "vs_ort_fp32": r.speedup_vs_baseline})  # fmt: skip
            print(f"  {task:4} {r.shape:10} {r.precision:5} {r.backend:12} {r.median_ms:9.2f} ms  "
                  f"{r.speedup_vs_baseline:5.2f}x ORT FP32", flush=True)  # fmt: skip
        for u in bench.unsupported:
            rows.append({"task": task, "model": model, "unsupported": u})
            print(f"  {task:4} not run: {u}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chains", nargs="+", default=["v6", "v3"], choices=sorted(CHAINS))
    ap.add_argument("--backends", nargs="+", default=["onnxruntime", "openvino"])
    ap.add_argument("--runs", type=Path, default=Path("runs"), help="where icdar2015.py wrote runs/<chain>")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/speed/speed.json"))
    args = ap.parse_args()
    host = machine_description()
    print(f"host: {host}")
    result = {"host": host, "command": " ".join(["python", *sys.argv]), "threads": args.threads,
              "rounds": args.rounds, "load_average": [os.getloadavg()[0]], "chains": {}}  # fmt: skip
    for chain in args.chains:
        print(f"\n{chain}:")
        result["chains"][chain] = chain_rows(chain, args)
    result["load_average"].append(os.getloadavg()[0])  # other work on the CPU, at start and end
    write_json_atomic(args.out, result)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    run_script(main)
