"""ncnn on the detectors: FP32 equals onnxruntime, INT8 from ocrquant's calibration, size and latency.

Run: python benchmarks/ncnn_det.py [--model ppocrv3-det|craft-mlt25k] [--limit N] [--calib-size N]
     [--canvas-size 640] [--method kl] [--int8-layers faster|all] [--threads 1 2] [--out runs/ncnn-bench]
     [--json FILE]

For the model (zoo name; CRAFT takes pnnx's TorchScript route, PP-OCRv3 det the ONNX route with the
Resize fix) and ICDAR2015 from ../shared:

1. output agreement: the same task-preprocessed det_test images through onnxruntime and ncnn FP32
   (max |difference|, lowest cosine), and ncnn INT8 vs ncnn FP32 (lowest cosine);
2. ``ncnn_report``: metric of ncnn FP32, ncnn INT8 and onnxruntime FP32 on det_test (first --limit
   images), INT8 calibrated on det_train (--calib-size images), model sizes;
3. interleaved latency per image (onnxruntime FP32, ncnn FP32, ncnn INT8, every --threads value), so the
   ratios hold on a shared machine.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ocrquant.api import build_task
from ocrquant.data import load_image, open_dataset
from ocrquant.fileio import write_json_atomic
from ocrquant.frontends.ncnn_export import ncnn_model_for
from ocrquant.quantization.ncnn_int8 import NcnnQuantConfig
from ocrquant.report.ncnn import NcnnReportConfig, ncnn_report
from ocrquant.runtime import RuntimeOptions, create_runner
from ocrquant.runtime.timing import interleaved_runs
from ocrquant.zoo.resolve import resolve_model

SHARED = Path(__file__).resolve().parents[2] / "shared/data/icdar2015"


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ppocrv3-det")
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--limit", type=int, default=None, help="det_test images evaluated (default: all 500)")
    ap.add_argument("--calib-size", type=int, default=200)
    ap.add_argument("--method", default="percentile")
    ap.add_argument("--int8-layers", default="faster", choices=["faster", "all"])
    ap.add_argument("--canvas-size", type=int, default=None, help="CRAFT canvas (smaller = faster)")
    ap.add_argument("--n", type=int, default=4, help="images for the output comparison and latency")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("runs/ncnn-bench"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    resolved = resolve_model(args.model)
    options = {"canvas_size": args.canvas_size} if args.canvas_size else {}
    task = build_task(resolved.task or "det", resolved, options)
    out = args.out / resolved.name
    row = ncnn_report(
        args.model, resolved.task, args.shared / "det_test", args.shared / "det_train",
        NcnnReportConfig(out_dir=out, calib_size=args.calib_size, limit=args.limit, threads=args.threads[0],
                         latency_images=args.n, task_options=options),
        NcnnQuantConfig(method=args.method, int8_layers=args.int8_layers, max_float=0),
    )  # fmt: skip
    report = {"model": resolved.name, "report": row.to_json(), "agreement": {}, "latency": {}}
    print(json.dumps(report["report"], indent=1, default=str))

    samples = open_dataset(args.shared / "det_test", resolved.task or "det").samples[: args.n]
    xs = [task.preprocess([load_image(s)]).inputs for s in samples]
    paths = {"ort-fp32": resolved.path, "ncnn-fp32": ncnn_model_for(resolved.path).param,
             "ncnn-int8": Path(row.details["int8 model"])}  # fmt: skip
    backend = {"ort-fp32": "onnxruntime", "ncnn-fp32": "ncnn", "ncnn-int8": "ncnn"}
    for th in args.threads:
        runners = {k: create_runner(p, backend[k], RuntimeOptions(threads=th)) for k, p in paths.items()}
        if th == args.threads[0]:
            outs = {k: [r.run({r.input_names[0]: x})[0] for x in xs] for k, r in runners.items()}
            pair = (outs["ort-fp32"], outs["ncnn-fp32"])
            report["agreement"] = {
                "ncnn_fp32_vs_ort_max_abs": max(
                    float(np.abs(a - b).max()) for a, b in zip(*pair, strict=True)
                ),
                "ncnn_fp32_vs_ort_min_cos": min(map(cosine, outs["ort-fp32"], outs["ncnn-fp32"])),
                "ncnn_int8_vs_fp32_min_cos": min(map(cosine, outs["ncnn-fp32"], outs["ncnn-int8"])),
                "input_shapes": [list(x.shape) for x in xs],
            }
            print(report["agreement"])
        lat = interleaved_runs(runners, {k: xs for k in runners}, rounds=args.rounds, warmup=1)
        report["latency"][f"{th} threads"] = {k: vars(v) for k, v in lat.items()}
        base = lat["ncnn-fp32"].median_ms
        print(f"{th} threads: " + ", ".join(f"{k} {v.median_ms:.1f} ms ({base / v.median_ms:.2f}x)"
                                           for k, v in lat.items()))  # fmt: skip
    if args.json:
        write_json_atomic(args.json, report)


if __name__ == "__main__":
    main()
