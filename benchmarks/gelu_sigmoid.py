"""Does the sigmoid GELU pay on PP-OCRv6 small? The measurement behind ``ort-cpu``'s per-task choice.

onnxruntime has no integer GELU: the exact op runs in float between a DequantizeLinear and a
QuantizeLinear. ``x * sigmoid(1.702 x)`` (``gelu_sigmoid`` in ``ocrquant/quantization/rewrites.py``)
runs as QLinearSigmoid + QLinearMul instead, but is an approximation. For each task, the same recipe is
quantized twice, GELU exact and GELU as the sigmoid form (nothing else differs), calibrated on the first
half of the training set and scored on the other half: the task's metric, and agreement with FP32 (the
FP32 model's outputs as the ground truth). Both INT8 files and the FP32 model are then timed in one
interleaved loop in onnxruntime and OpenVINO (2 threads, spinning off, OpenVINO with an f32 hint).

  python benchmarks/gelu_sigmoid.py [--shared ../shared/data/icdar2015] [--tasks det rec] [--out runs/gelu]

Recipes: det percentile 99.99 + the det defaults (act_cle, hs_floor, weight_width), 100 det_train
images, scored on the other 100; rec mse + the rec defaults + bias correction, 200 of the first 2234
rec_train crops, scored on the other 2234. Test sets are not read. Writes ``gelu_sigmoid.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from ocrquant.analysis.bench import run_bench
from ocrquant.api import build_task
from ocrquant.data import open_dataset
from ocrquant.data.types import Dataset
from ocrquant.errors import run_script
from ocrquant.evaluation import evaluate
from ocrquant.evaluation.evaluate import fidelity
from ocrquant.fileio import write_json_atomic
from ocrquant.quantization import QuantConfig
from ocrquant.quantization.pipeline import quantize_recipe
from ocrquant.quantization.targets import ORT_CPU, register_target
from ocrquant.report.table import machine_description
from ocrquant.runtime import RuntimeOptions, create_runner
from ocrquant.zoo.resolve import resolve_model

MODELS = {"det": "ppocrv6-small-det", "rec": "ppocrv6-small-rec"}
TRAIN = {"det": "det_train", "rec": "rec_train"}
RECIPES = {
    "det": {"method": "percentile", "method_options": {"percentile": 99.99}, "calib_size": 100},
    "rec": {"method": "mse", "extra_algorithms": ["bias_correction"], "calib_size": 200},
}
SHAPES = {"det": ["544x960"], "rec": ["48x320 b1", "48x320 b8"]}
PRIMARY = {"det": "hmean", "rec": "acc"}


def variant_targets() -> dict[str, str]:
    """Two copies of ort-cpu that differ only in how every task's GELU is written."""
    base = ORT_CPU.prepare_rewrites  # every task's list; det's adds gelu_sigmoid
    at = base.index("gelu") + 1
    sigmoid = base[:at] + ("gelu_sigmoid",) + base[at:]
    variants = {"exact": base, "sigmoid": sigmoid}
    for name, rewrites in variants.items():
        register_target(
            dataclasses.replace(
                ORT_CPU, name=f"gelu-{name}", prepare_rewrites=rewrites, task_prepare_rewrites={}
            )
        )
    return {name: f"gelu-{name}" for name in variants}


def task_rows(task_name: str, args: argparse.Namespace, targets: dict[str, str]) -> dict:
    train = open_dataset(args.shared / TRAIN[task_name], task_name)
    half = len(train.samples) // 2
    calib = Dataset(train.root, task_name, train.format, train.samples[:half])
    held = Dataset(train.root, task_name, train.format, train.samples[half:])
    model = resolve_model(MODELS[task_name])
    task = build_task(task_name, model)
    opts = RuntimeOptions(threads=2)
    ref = evaluate(task, create_runner(model.path, "onnxruntime", opts), held, progress=False)
    primary = PRIMARY[task_name]
    print(
        f"\n{task_name}: FP32 {primary} {ref.metrics[primary]:.4f} on {held.root.name} [{half}:]", flush=True
    )
    out = {"fp32": ref.metrics[primary], "held_out": len(held.samples), "variants": {}}
    files = [model.path]
    for name, target in targets.items():
        path = args.out / f"{task_name}.{name}.int8.onnx"
        cfg = QuantConfig(target=target, progress=False, **RECIPES[task_name])
        quantize_recipe(model, task_name, calib, path, cfg)
        got = evaluate(task, create_runner(path, "onnxruntime", opts), held, progress=False)
        agree = fidelity(task, got, ref)[primary]
        out["variants"][name] = {"metric": got.metrics[primary], "agreement_with_fp32": agree}
        print(
            f"  GELU {name:8} {primary} {got.metrics[primary]:.4f}  agreement with FP32 {agree:.4f}",
            flush=True,
        )
        files.append(path)
    bench = run_bench(
        files, task_name, backends=args.backends, shapes=SHAPES[task_name], rounds=args.rounds,
        progress=False, memory=False,
    )  # fmt: skip
    out["bench"] = []
    for r in bench.rows:
        label = "fp32" if r.precision.lower().startswith("fp") else Path(r.model).stem.split(".")[1]
        out["bench"].append(
            {"model": label, "backend": r.backend, "shape": r.shape, "median_ms": r.median_ms}
        )
        print(f"  {label:8} {r.backend:12} {r.shape:10} {r.median_ms:8.2f} ms", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=Path("../shared/data/icdar2015"))
    ap.add_argument("--tasks", nargs="+", default=["det", "rec"], choices=sorted(MODELS))
    ap.add_argument("--backends", nargs="+", default=["onnxruntime", "openvino"])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("runs/gelu"))
    args = ap.parse_args()
    for task in args.tasks:  # a missing or unreadable dataset fails here, before anything is written
        open_dataset(args.shared / TRAIN[task], task)
    args.out.mkdir(parents=True, exist_ok=True)
    host = machine_description()
    print(f"host: {host}", flush=True)
    targets = variant_targets()
    result = {"host": host, "command": " ".join(["python", *sys.argv]), "load_average": [os.getloadavg()[0]]}
    result["tasks"] = {t: task_rows(t, args, targets) for t in args.tasks}
    result["load_average"].append(os.getloadavg()[0])
    write_json_atomic(args.out / "gelu_sigmoid.json", result)
    print(f"\nwrote {args.out / 'gelu_sigmoid.json'}")


if __name__ == "__main__":
    run_script(main)
