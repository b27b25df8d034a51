"""How long ``ocrquant quantize`` takes with its defaults, per task, from empty calibration caches.

Each run is the command a user types (``ocrquant quantize -m MODEL --calib-data DIR -o OUT``, the
budget escalation included), in a fresh process with a fresh calibration cache, optionally with
``--workers N`` (the range candidates in N local processes). Printed per run: wall time, the recipe
``auto`` picked, and where the time went (the sidecar's ``method_search.seconds``: the range
candidates, the qdq-stage algorithms, each validated algorithm's trial). The zoo's model cache is
kept (fetching is not quantizing). The load average at start and end says whether other work shared
the CPU.

  python benchmarks/quantize_time.py [--chain v3] [--tasks det cls rec] [--workers 0 2] [--keep DIR]

``--keep DIR`` copies each INT8 model and its sidecar there (``<task>.w<workers>.int8.onnx``), to be
scored afterwards (``ocrquant eval``) without quantizing again.

Writes ``runs/quantize-time/quantize_time.json`` (read by ``benchmarks/results.py``), keeping the rows an
earlier run on this host wrote for the models not measured now (so ``--chain v6 --tasks det`` adds
PP-OCRv6 det beside the PP-OCRv3 rows).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from icdar2015 import CALIB, CHAINS

from ocrquant.errors import OcrQuantError, run_script
from ocrquant.fileio import copy_quantized, read_sidecar, write_json_atomic, write_sidecar
from ocrquant.report.table import machine_description


def timed_quantize(
    model: str, task: str, calib: Path, workers: int, scratch: Path, keep: Path | None
) -> dict:
    out = scratch / f"{task}.w{workers}.int8.onnx"
    # the command as a user types it, then this run's own calibration cache (empty, so nothing is reused)
    shown = ["quantize", "-m", model, "--calib-data", str(calib), "-o", str(out)]
    shown += ["--workers", str(workers)] if workers else []
    cache = ["--cache-dir", str(scratch / f"cache-{task}-{workers}")]
    cmd = [sys.executable, "-m", "ocrquant.cli.main", *shown, *cache]
    load = [os.getloadavg()[0]]
    t = time.perf_counter()
    log = scratch / f"{task}.w{workers}.log"
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t
    load.append(os.getloadavg()[0])
    if proc.returncode != 0:  # the log lives in a scratch folder that goes with the error: quote it
        last = ([ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()] or [""])[-1]
        raise OcrQuantError(f"ocrquant quantize failed (exit {proc.returncode}): {last.strip()}", model)
    side = read_sidecar(out)
    if keep:  # the model and its sidecar, to be scored later without quantizing again
        copy_quantized(out, keep / out.name)
        write_sidecar(keep / out.name, side)
    search = side.get("method_search", {})
    return {"task": task, "model": model, "workers": workers, "seconds": round(seconds, 1),
            "recipe": {k: side["settings"].get(k) for k in ("method", "method_options", "algorithms")},
            "phases": search.get("seconds", {}), "load_average": load,
            "command": " ".join(["ocrquant", *shown])}  # fmt: skip


def kept_rows(out: Path, host: str, models: list[str]) -> list[dict]:
    """The rows an earlier run on this host wrote for the other models (one model's defaults take
    minutes to an hour, so models and chains are measured one run at a time); each row names the
    command that made it."""
    if not out.is_file():
        return []
    old = json.loads(out.read_text())
    if old.get("host") != host:
        return []
    return [
        {**r, "benchmark_command": r.get("benchmark_command", old.get("command", ""))}
        for r in old["rows"]
        if r["model"] not in models
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chain", default="v3", choices=sorted(CHAINS))
    ap.add_argument("--tasks", nargs="+", default=["det", "cls", "rec"], choices=["det", "cls", "rec"])
    ap.add_argument("--workers", nargs="+", type=int, default=[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared/data/icdar2015"))
    ap.add_argument("--out", type=Path, default=Path("runs/quantize-time/quantize_time.json"))
    ap.add_argument("--keep", type=Path, default=None, help="copy each INT8 model and sidecar here")
    args = ap.parse_args()
    if args.keep and args.keep.exists() and not args.keep.is_dir():
        raise OcrQuantError("--keep must name a folder", args.keep)
    for task in args.tasks:  # before minutes of quantizing the other tasks
        if not (args.shared / CALIB[task]).is_dir():
            raise OcrQuantError("calibration directory not found", args.shared / CALIB[task])
    host = machine_description()
    print(host, flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ocrquant-qtime-") as tmp:
        for task in args.tasks:
            for workers in args.workers:
                row = timed_quantize(
                    CHAINS[args.chain][task], task, args.shared / CALIB[task], workers, Path(tmp), args.keep
                )
                rows.append(row)
                phases = ", ".join(f"{k} {v}" for k, v in row["phases"].items())
                print(f"  {row['model']:20} workers {workers}  {row['seconds'] / 60:5.1f} min  "
                      f"{row['recipe']['method']} {row['recipe']['algorithms']}  [{phases}]  "
                      f"load {row['load_average'][0]:.1f}->{row['load_average'][1]:.1f}",
                      flush=True)  # fmt: skip
    command = f"python benchmarks/quantize_time.py --chain {args.chain} --tasks {' '.join(args.tasks)} " + (
        f"--workers {' '.join(map(str, args.workers))}"
    )
    for row in rows:
        row["benchmark_command"] = command
    models = [CHAINS[args.chain][task] for task in args.tasks]
    write_json_atomic(args.out, {"host": host, "rows": kept_rows(args.out, host, models) + rows})
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    run_script(main)
