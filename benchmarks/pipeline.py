"""Whole-pipeline throughput and end-to-end accuracy: ocrquant's INT8 PP-OCRv6 chain against rapidocr 3.10's
own FP32 pipeline, on the same images, threads and host.

Users run pipelines, not models: rapidocr 3.10 reads a folder with FP32 PP-OCRv6 small det + v2.0 cls
+ PP-OCRv6 small rec. This script runs, per image and in a rotating order (so load drift on a shared
machine falls on every pipeline alike):

* ``rapidocr-fp32``: ``rapidocr.RapidOCR`` with the zoo's v6 files, its own settings, 2 onnxruntime threads;
* ``ocrquant-fp32``: ocrquant's pipeline (``ocrquant ocr``) with the same float models;
* ``ocrquant-int8`` per backend: the INT8 models ``benchmarks/icdar2015.py --chain v6`` wrote into
  ``runs/v6`` (``ocrquant quantize`` defaults), on onnxruntime and OpenVINO;
* ``ocrquant-int8-openvino-target``: where ``benchmarks/openvino_target.py`` made them, the
  ``--target openvino`` models (``runs/openvino-target/v6``) on OpenVINO.

Each image is decoded once and handed to every pipeline as the same array, so the times are the
pipelines' (pre-processing, models, post-processing), not the decoder's. Every pipeline's lines are
scored with the same end-to-end metric (ICDAR2015, no lexicon). Prints images/s, the ratio to
rapidocr's, e2e hmean, and writes ``runs/pipeline/pipeline.json`` (read by ``benchmarks/results.py``).

  python benchmarks/pipeline.py [--shared DIR] [--limit N] [--backends onnxruntime openvino]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from icdar2015 import CHAINS

from ocrquant.data import load_image, open_dataset
from ocrquant.errors import OcrQuantError, run_script
from ocrquant.fileio import write_json_atomic
from ocrquant.metrics.e2e import E2EMetric
from ocrquant.pipeline.build import build_pipeline
from ocrquant.report.table import machine_description
from ocrquant.runtime import RuntimeOptions
from ocrquant.zoo.resolve import resolve_model

V6 = CHAINS["v6"]


def rapidocr_pipeline(threads: int):  # noqa: ANN201 - rapidocr's own object
    """rapidocr 3.10 as its users run it, pointed at the zoo's copies of its v6 files (the same bytes
    as in its wheel) with ``threads`` onnxruntime threads; every other setting its own."""
    try:
        import rapidocr
    except ImportError:
        raise OcrQuantError("rapidocr 3.10 is not installed: pip install -e '.[dev]'") from None
    params = {
        "Det.model_path": str(resolve_model(V6["det"]).path),
        "Cls.model_path": str(resolve_model(V6["cls"]).path),
        "Rec.model_path": str(resolve_model(V6["rec"]).path),
        "Global.log_level": "critical",
        "EngineConfig.onnxruntime.intra_op_num_threads": threads,
    }
    engine = rapidocr.RapidOCR(params=params)

    def run(image: np.ndarray) -> dict:
        out = engine(image)
        if out.boxes is None:
            return {"polygons": [], "texts": [], "scores": []}
        return {"polygons": np.asarray(out.boxes).tolist(), "texts": list(out.txts),
                "scores": [float(s) for s in out.scores]}  # fmt: skip

    return run


def ocrquant_pipeline(models: dict[str, str], precision: str, backend: str, threads: int):  # noqa: ANN201
    pipe = build_pipeline(models["det"], models["cls"], models["rec"], precision=precision, backend=backend,
                          runtime=RuntimeOptions(threads=threads))  # fmt: skip
    return lambda image: pipe.run(image).to_prediction()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=Path("../shared/data/icdar2015"))
    ap.add_argument(
        "--runs", type=Path, default=Path("runs/v6"), help="where icdar2015.py wrote the INT8 chain"
    )
    ap.add_argument("--backends", nargs="+", default=["onnxruntime", "openvino"])
    ap.add_argument("--openvino-runs", type=Path, default=Path("runs/openvino-target/v6"),
                    help="the --target openvino chain (benchmarks/openvino_target.py)")  # fmt: skip
    ap.add_argument("--limit", type=int, default=0, help="first N det_test images (0: all 500)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/pipeline/pipeline.json"))
    args = ap.parse_args()

    host = machine_description()
    print(host, flush=True)
    int8 = {t: args.runs / f"{t}.int8.onnx" for t in ("det", "cls", "rec")}
    for path in int8.values():
        if not path.is_file():
            raise OcrQuantError("no INT8 model: run python benchmarks/icdar2015.py --chain v6", path)
    pipelines = {"rapidocr-fp32": rapidocr_pipeline(args.threads),
                 "ocrquant-fp32": ocrquant_pipeline(V6, "fp32", "onnxruntime", args.threads)}  # fmt: skip
    for backend in args.backends:
        models = {t: str(p) for t, p in int8.items()}
        pipelines[f"ocrquant-int8-{backend}"] = ocrquant_pipeline(models, "int8", backend, args.threads)
    ov_target = {t: args.openvino_runs / f"{t}.int8.onnx" for t in ("det", "cls", "rec")}
    if "openvino" in args.backends and all(p.is_file() for p in ov_target.values()):
        models = {t: str(p) for t, p in ov_target.items()}
        pipelines["ocrquant-int8-openvino-target"] = ocrquant_pipeline(
            models, "int8", "openvino", args.threads
        )
    dataset = open_dataset(args.shared / "det_test", "det")
    samples = dataset.samples[: args.limit] if args.limit else dataset.samples
    names = list(pipelines)
    seconds = dict.fromkeys(names, 0.0)
    metrics = {n: E2EMetric(None) for n in names}
    load = [os.getloadavg()[0]]
    image0 = load_image(samples[0])
    for n in names:  # warm-up: sessions built, arenas grown, OpenVINO compiled for the first shape
        pipelines[n](image0)
    for i, sample in enumerate(samples):
        image = load_image(sample)
        for n in names[i % len(names) :] + names[: i % len(names)]:
            t = time.perf_counter()
            prediction = pipelines[n](image)
            seconds[n] += time.perf_counter() - t
            metrics[n].update({**prediction, "key": sample.key}, sample.target)
        if (i + 1) % 50 == 0:
            print(f"  {i + 1}/{len(samples)} images", flush=True)
    load.append(os.getloadavg()[0])
    base = len(samples) / seconds["rapidocr-fp32"]
    rows = []
    for n in names:
        ips = len(samples) / seconds[n]
        figures = metrics[n].result()
        rows.append({"pipeline": n, "images_per_s": round(ips, 4), "vs_rapidocr": round(ips / base, 4),
                     "e2e_hmean": round(figures["hmean"], 4), "e2e_precision": round(figures["precision"], 4),
                     "e2e_recall": round(figures["recall"], 4)})  # fmt: skip
        print(f"  {n:26} {ips:6.2f} images/s  {ips / base:5.2f}x rapidocr  e2e hmean {figures['hmean']:.4f}",
              flush=True)  # fmt: skip
    command = "python benchmarks/pipeline.py" + (f" --limit {args.limit}" if args.limit else "")
    result = {"host": host, "command": command, "threads": args.threads, "images": len(samples),
              "load_average": load, "rows": rows}  # fmt: skip
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    run_script(main)
