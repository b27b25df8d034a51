"""Denormal float weights in the zoo models: how many, what they cost onnxruntime FP32, and that
zeroing them (what ``prepare_model`` does, ``flush_denormal_weights``) changes no output.

For each zoo model: the float32 initializer values below the smallest normal float32 (1.2e-38);
then three sessions timed interleaved in one loop (onnxruntime CPU, 2 threads, spinning off) on
real images at the model's own preprocessing: the file as shipped, the same file with
``session.set_denormal_as_zero``, and the file with its denormal weights set to zero. The last
columns are the largest output difference of the two variants from the file as shipped, over the
images used. Intel cores take a microcode assist for every multiply with a denormal; AMD Zen cores
do not, so the ratios depend on the host, which is printed first.

  python benchmarks/denormals.py [--models ppocrv6-small-det ...] [--images 4] [--rounds 8]

Prints a table and writes ``runs/denormals/denormals.json`` (read by ``benchmarks/results.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ocrquant.data import open_dataset
from ocrquant.errors import run_script
from ocrquant.evaluation.evaluate import preprocessed_inputs
from ocrquant.fileio import write_json_atomic
from ocrquant.quantization.prepare import flush_denormal_weights
from ocrquant.report.table import machine_description
from ocrquant.runtime import RuntimeOptions
from ocrquant.runtime.ort import session_options
from ocrquant.zoo.resolve import ResolvedModel, resolve_model
from ocrquant.zoo.task import build_task, infer_task

MODELS = ["ppocrv6-small-det", "ppocrv6-small-rec", "ppocrv6-cls", "ppocrv3-det", "ppocrv3-rec"]
DATA = {"det": "det_train", "rec": "rec_train", "cls": "rec_train"}  # never the test sets


def session(model: str | bytes, threads: int, daz: bool) -> ort.InferenceSession:
    so = session_options(RuntimeOptions(threads=threads))  # ocrquant's runner's: spinning off
    if daz:
        so.add_session_config_entry("session.set_denormal_as_zero", "1")
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def real_inputs(name: str, args: argparse.Namespace) -> tuple[ResolvedModel, list[np.ndarray]]:
    """A model and its preprocessed training images; a bad name, file or data folder fails here."""
    resolved = resolve_model(name)
    task = build_task(infer_task(resolved, None), resolved)
    dataset = open_dataset(args.data / DATA[task.name], task.name)
    return resolved, preprocessed_inputs(task, dataset, args.images)


def measure(name: str, resolved: ResolvedModel, inputs: list[np.ndarray], args: argparse.Namespace) -> dict:
    """Count, time and compare one model's three variants."""
    model = onnx.load(str(resolved.path))
    flushed = flush_denormal_weights(model)
    sessions = {
        "shipped": session(str(resolved.path), args.threads, daz=False),
        "denormal_as_zero": session(str(resolved.path), args.threads, daz=True),
        "weights_zeroed": session(model.SerializeToString(), args.threads, daz=False),
    }
    feed = sessions["shipped"].get_inputs()[0].name
    diff = {k: 0.0 for k in sessions}
    for x in inputs:
        ref = sessions["shipped"].run(None, {feed: x})[0]
        for k, s in sessions.items():
            diff[k] = max(diff[k], float(np.abs(s.run(None, {feed: x})[0] - ref).max()))
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(args.rounds):
        for x in inputs:
            for k, s in sessions.items():
                t0 = time.perf_counter()
                s.run(None, {feed: x})
                times[k].append(time.perf_counter() - t0)
    ms = {k: 1000 * float(np.median(v)) for k, v in times.items()}
    return {"model": name, "denormal_weights": flushed, "ms": ms, "max_abs_diff": diff,
            "input": "x".join(map(str, inputs[0].shape[2:]))}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/icdar2015"))
    ap.add_argument("--images", type=int, default=4, help="real inputs, each timed every round")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/denormals/denormals.json"))
    args = ap.parse_args()
    host = machine_description()
    result = {"host": host, "command": " ".join(["python", *sys.argv]), "threads": args.threads,
              "rounds": args.rounds, "images": args.images, "load_average": [os.getloadavg()[0]],
              "models": []}  # fmt: skip
    prepared = {name: real_inputs(name, args) for name in args.models}  # every input checked first
    print(f"host: {host}\n")
    print("| model | input (first) | denormal weights | shipped ms | set_denormal_as_zero | weights zeroed "
          "| max abs diff (as zero / zeroed) |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for name in args.models:
        r = measure(name, *prepared[name], args)
        result["models"].append(r)
        ms, d = r["ms"], r["max_abs_diff"]
        daz, zeroed = ms["shipped"] / ms["denormal_as_zero"], ms["shipped"] / ms["weights_zeroed"]
        print(f"| {name} | {r['input']} | {r['denormal_weights']} | {ms['shipped']:.2f} | {daz:.2f}x "
              f"| {zeroed:.2f}x "
              f"| {d['denormal_as_zero']:.3g} / {d['weights_zeroed']:.3g} |", flush=True)  # fmt: skip
    result["load_average"].append(os.getloadavg()[0])  # other work on the CPU, at start and end
    write_json_atomic(args.out, result)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    run_script(main)
