"""``--target openvino`` against the ort-cpu file in OpenVINO: speed over OpenVINO FP32 and accuracy.

For each chain (v6, v3) and task:

1. ``ocrquant quantize`` with its defaults and ``--target openvino`` (calibrated on det_train /
   rec_train), into ``runs/openvino-target/<chain>/<task>.int8.onnx``; reused when there.
2. That file on the task's full test set in plain OpenVINO (2 threads, f32 precision hint), against
   FP32 and against the default (ort-cpu) INT8 file in onnxruntime, both as
   ``benchmarks/icdar2015.py`` scored them in ``runs/<chain>/``; each delta with its paired 95 %
   bootstrap interval.
3. One interleaved timing loop per task (``ocrquant bench``'s engine, 2 threads, onnxruntime spinning
   off, OpenVINO static shapes): FP32, the ort-cpu INT8 file and the openvino INT8 file, each in
   onnxruntime and OpenVINO, at the shapes icdar2015.py times.

  python benchmarks/openvino_target.py [--chains v6 v3] [--shared ../shared/data/icdar2015]

Writes ``runs/openvino-target/summary.json`` (read by ``benchmarks/results.py``). Needs the chains'
``runs/<chain>`` from ``benchmarks/icdar2015.py`` first.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from icdar2015 import CALIB, CHAINS, TEST, bench_shapes, quantized
from openvino_accuracy import decision_differs, evaluated_on

from ocrquant.analysis.bench import run_bench
from ocrquant.api import build_task
from ocrquant.data import open_dataset
from ocrquant.errors import OcrQuantError, run_script
from ocrquant.evaluation.evaluate import EvalResult
from ocrquant.evaluation.significance import paired_delta_interval
from ocrquant.fileio import read_sidecar, write_json_atomic
from ocrquant.report.table import machine_description
from ocrquant.runtime import RuntimeOptions
from ocrquant.zoo.resolve import resolve_model


def accuracy(chain: str, task: str, model: Path, args: argparse.Namespace) -> dict:
    """The openvino file in OpenVINO against FP32 and against the ort-cpu file in onnxruntime."""
    runs = args.runs / chain
    fp32_file, ort_file = runs / f"{task}.fp32.json", runs / f"{task}.int8.json"
    if not (fp32_file.is_file() and ort_file.is_file()):
        raise OcrQuantError(f"no FP32/INT8 result: run python benchmarks/icdar2015.py --chain {chain}", runs)
    fp32, ort = EvalResult.read(fp32_file), EvalResult.read(ort_file)
    ov = evaluated_on(model, task, args, "openvino", RuntimeOptions(threads=2))
    metric = build_task(task, resolve_model(CHAINS[chain][task])).new_metric()
    primary = ort.settings["primary_metric"]
    row = {"metric": primary, "fp32": fp32.metrics[primary], "ort_int8": ort.metrics[primary],
           "openvino_int8": ov.metrics[primary]}  # fmt: skip
    for name, ref in (("vs_fp32", fp32), ("vs_ort_int8", ort)):
        ci = paired_delta_interval(metric, ref.samples, ov.samples)
        row[name] = [ci["low"], ci["high"]] if ci else None
    by_key = {s["key"]: s for s in ort.samples}
    row["decisions_differ_from_ort_int8"] = sum(
        decision_differs(task, by_key[s["key"]], s) for s in ov.samples
    )
    print(f"  {chain} {task:4} {primary} FP32 {row['fp32']:.4f}  ORT INT8 (ort-cpu) {row['ort_int8']:.4f}  "
          f"OpenVINO INT8 (openvino) {row['openvino_int8']:.4f}", flush=True)  # fmt: skip
    return row


def speed(chain: str, task: str, model: Path, args: argparse.Namespace) -> list[dict]:
    """Median ms of FP32 / ort-cpu INT8 / openvino INT8 in both runtimes, one interleaved loop."""
    files = {
        "fp32": CHAINS[chain][task],
        "ort-cpu": args.runs / chain / f"{task}.int8.onnx",
        "openvino": model,
    }
    bench = run_bench(
        list(files.values()), task, backends=["onnxruntime", "openvino"], shapes=bench_shapes(chain, task),
        rounds=args.rounds, threads=2, progress=False, memory=False,
    )  # fmt: skip
    labels = dict(zip(bench.labels, files, strict=True))
    rows = [{"file": labels[r.model], "backend": r.backend, "shape": r.shape,
             "median_ms": r.median_ms} for r in bench.rows]  # fmt: skip
    for shape in dict.fromkeys(r["shape"] for r in rows):
        ms = {(r["file"], r["backend"]): r["median_ms"] for r in rows if r["shape"] == shape}
        ort32, ov32 = ms[("fp32", "onnxruntime")], ms[("fp32", "openvino")]
        print(f"  {chain} {task:4} {shape:10} ORT FP32 {ort32:8.2f} ms | OpenVINO: FP32 {ort32 / ov32:.2f}x, "
              f"ort-cpu file {ort32 / ms[('ort-cpu', 'openvino')]:.2f}x, openvino file "
              f"{ort32 / ms[('openvino', 'openvino')]:.2f}x ORT FP32 "
              f"({ov32 / ms[('openvino', 'openvino')]:.2f}x OpenVINO FP32)", flush=True)  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chains", nargs="+", default=["v6", "v3"], choices=sorted(CHAINS))
    ap.add_argument("--tasks", nargs="+", default=["det", "cls", "rec"], choices=["det", "cls", "rec"])
    ap.add_argument("--shared", type=Path, default=Path("../shared/data/icdar2015"))
    ap.add_argument("--runs", type=Path, default=Path("runs"), help="where icdar2015.py wrote runs/<chain>")
    ap.add_argument("--out", type=Path, default=Path("runs/openvino-target"))
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    for split in {CALIB[t] for t in args.tasks} | {TEST[t] for t in args.tasks}:
        open_dataset(args.shared / split, "det" if split.startswith("det") else "rec")  # bad --shared: exit 2
    host = machine_description()
    print(f"host: {host}", flush=True)
    result = {"host": host, "command": " ".join(["python", *sys.argv]), "load_average": [os.getloadavg()[0]],
              "rows": []}  # fmt: skip
    made = {}
    for chain in args.chains:  # quantize and score everything first, then time on a quiet machine
        for task in args.tasks:
            out = args.out / chain
            out.mkdir(parents=True, exist_ok=True)
            path, how = quantized(CHAINS[chain][task], task, args.shared, out, target="openvino")
            recipe = read_sidecar(path).get("settings", {})
            made[chain, task] = path
            result["rows"].append({"chain": chain, "task": task, "quantize": how,
                                   "recipe": {k: recipe.get(k) for k in ("method", "algorithms")},
                                   "accuracy": accuracy(chain, task, path, args)})  # fmt: skip
    for row in result["rows"]:
        row["speed"] = speed(row["chain"], row["task"], made[row["chain"], row["task"]], args)
    result["load_average"].append(os.getloadavg()[0])
    write_json_atomic(args.out / "summary.json", result)
    print(f"wrote {args.out / 'summary.json'}")


if __name__ == "__main__":
    run_script(main)
