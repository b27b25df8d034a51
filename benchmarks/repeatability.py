"""Whether learning through a QDQ graph repeats itself: the same backward pass, bit for bit.

``distill`` learns through ocrquant's torch interpreter of the QDQ graph; ``auto`` keeps or rejects
what it learned on held-out images, so a run that computes other floats can flip that decision. Intel
MKL (torch's BLAS on x86) chooses code paths by buffer alignment unless ``MKL_CBWR`` asks for
reproducible results; ``import ocrquant`` sets ``MKL_CBWR=AUTO`` unless the user set it.

Each process (a fresh interpreter, as a new ``ocrquant quantize`` is) builds the interpreter of
``--model``, runs forward and backward on one fixed random input ``--passes`` times, and counts the
distinct gradients (bit for bit) among its passes: 1 is a run that repeats itself. Processes
alternate between MKL's default (``MKL_CBWR`` empty) and ``MKL_CBWR=AUTO``; seconds per pass show
what reproducibility costs.

  python benchmarks/repeatability.py --model det.int8.onnx [--shape 1 3 736 1280] [--passes 20]
      [--processes 2]

``--model``: a QDQ model ``ocrquant quantize`` wrote. The figures in docs/quantization.md use
``ocrquant quantize -m ppocrv6-small-det --calib-data ../shared/data/icdar2015/det_train --calib-size
140 --method percentile --percentile 99.99 -o det.int8.onnx`` (distill learning on PP-OCRv3 det wrote
the same bytes in every run). Prints a table and writes ``--out`` (JSON) when given.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx

from ocrquant.errors import OcrQuantError, run_script
from ocrquant.fileio import write_json_atomic
from ocrquant.quantization.graph import is_quantized, load_model
from ocrquant.report.table import machine_description

#: MKL's default (an empty value: ``import ocrquant`` keeps it, MKL ignores it) and reproducible
SETTINGS = ("", "AUTO")


def child(args: argparse.Namespace) -> None:
    """One process: ``--passes`` identical backward passes; prints a JSON line."""
    import torch  # noqa: PLC0415 - the torch extra; the parent process needs none of it

    from ocrquant.quantization.torch_qdq import QDQModule  # noqa: PLC0415 - needs torch

    model = onnx.load(str(args.model))
    net = QDQModule(model)
    out = model.graph.output[0].name
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(args.shape).astype(np.float32))
    results, t0 = set(), time.perf_counter()
    for _ in range(args.passes):
        net.zero_grad(set_to_none=True)
        net(x, until=out).square().mean().backward()
        digest = hashlib.sha256()
        for p in net.parameters():
            if p.grad is not None:
                digest.update(p.grad.numpy().tobytes())
        results.add(digest.hexdigest())
    seconds = (time.perf_counter() - t0) / args.passes
    print(
        json.dumps({"mkl_cbwr": os.environ.get("MKL_CBWR"), "distinct": len(results), "s_per_pass": seconds})
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="a QDQ .onnx written by ocrquant quantize")
    ap.add_argument("--shape", type=int, nargs=4, default=[1, 3, 736, 1280])
    ap.add_argument("--passes", type=int, default=20, help="backward passes per process")
    ap.add_argument("--processes", type=int, default=2, help="processes per MKL_CBWR setting")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if not is_quantized(load_model(args.model)):
        raise OcrQuantError("not a quantized model (give the INT8 .onnx ocrquant quantize wrote)", args.model)
    if args.passes < 2 or args.processes < 1:
        raise OcrQuantError("--passes must be at least 2 and --processes at least 1")
    host = machine_description()
    print(f"host: {host}\n")
    rows = []
    command = [sys.executable, __file__, "--child", "--model", str(args.model), "--passes", str(args.passes),
               "--shape", *map(str, args.shape)]  # fmt: skip
    for _ in range(args.processes):
        for setting in SETTINGS:
            env = {**os.environ, "MKL_CBWR": setting}
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise OcrQuantError(f"the MKL_CBWR={setting} process failed: {tail}", args.model)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(
        f"| MKL_CBWR | processes | distinct gradients in each process's {args.passes} passes | s per pass |"
    )
    print("|---|---|---|---|")
    for setting in SETTINGS:
        mine = [r for r in rows if r["mkl_cbwr"] == setting]
        seconds = float(np.median([r["s_per_pass"] for r in mine]))
        distinct = ", ".join(str(r["distinct"]) for r in mine)
        print(f"| {setting or '(MKL default)'} | {len(mine)} | {distinct} | {seconds:.2f} |")
    if args.out:
        write_json_atomic(args.out, {"host": host, "command": " ".join(["python", *sys.argv]), "rows": rows})
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    run_script(main)
