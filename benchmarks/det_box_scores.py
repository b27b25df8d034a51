"""How INT8 changes det's decision statistic: the DB box score, on the float model's own boxes.

DB keeps a candidate box when the mean probability inside it reaches ``box_thresh`` (0.6). This script
scores every candidate box of the FP32 map (contours of ``prob > thresh``) on the FP32 and on the INT8
map, and prints the mean change per FP32-score band: a random INT8 error moves scores both ways, a
biased one moves them one way. It then prints how many boxes each model keeps at a range of
``box_thresh`` values, i.e. which INT8 threshold keeps as many boxes as FP32 keeps at the default (a
label-free operating-point match; it needs no ground truth, so run it on calibration-side images).

  python benchmarks/det_box_scores.py --int8 det.int8.onnx --data ../shared/data/icdar2015/det_train

With ``--images 100`` (the default) it reads every second of the 200 det_train images.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import cv2
import numpy as np

from ocrquant.api import build_task
from ocrquant.data import open_dataset
from ocrquant.errors import OcrQuantError, run_script
from ocrquant.evaluation.evaluate import preprocessed_inputs
from ocrquant.runtime import RuntimeOptions, create_runner
from ocrquant.tasks.base import Task
from ocrquant.tasks.det import DetConfig, box_score_fast, db_postprocess, get_mini_boxes
from ocrquant.zoo.resolve import resolve_model

BANDS = [(0.3, 0.5), (0.5, 0.6), (0.6, 0.7), (0.7, 0.8), (0.8, 1.01)]
THRESHOLDS = [0.6, 0.58, 0.56, 0.54, 0.52, 0.5]


def prob_maps(task: Task, model: Path, inputs: list[np.ndarray], threads: int) -> list[np.ndarray]:
    runner = create_runner(model, "onnxruntime", RuntimeOptions(threads=threads, spinning=False))
    task.check_model(runner, model)
    name = runner.input_names[0]
    maps = []
    for x in inputs:
        out = runner.run({name: x})[0]
        if out.ndim != 4 or out.shape[1] != 1:  # what DetTask.postprocess reads
            shape = list(out.shape)
            raise OcrQuantError(f"not a det model: output should be N x 1 x H x W, got {shape}", model)
        maps.append(out[0, 0])
    return maps


def candidate_scores(f: np.ndarray, q: np.ndarray, cfg: DetConfig) -> list[tuple[float, float]]:
    """(FP32 score, INT8 score) of every candidate box DB finds on the FP32 map ``f`` before its
    ``box_thresh`` test (quad boxes, the default "fast" box score)."""
    contours, _ = cv2.findContours(
        ((f > cfg.thresh) * 255).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE
    )
    pairs = []
    for contour in contours[: cfg.max_candidates]:
        points, short_side = get_mini_boxes(contour)
        if short_side >= cfg.min_size:
            pairs.append((box_score_fast(f, points), box_score_fast(q, points)))
    return pairs


def kept_boxes(maps: list[np.ndarray], cfg: DetConfig, box_thresh: float) -> int:
    c = dataclasses.replace(cfg, box_thresh=box_thresh)
    return sum(len(db_postprocess(m, m.shape[0], m.shape[1], c)["polygons"]) for m in maps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--int8", type=Path, required=True, help="quantized det model")
    ap.add_argument("--model", default="ppocrv3-det", help="its float model (zoo name or .onnx)")
    ap.add_argument("--data", type=Path, required=True, help="det images (calibration side, not test)")
    ap.add_argument("--images", type=int, default=100, help="images used, evenly spaced over the set")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    resolved = resolve_model(args.model)
    task = build_task("det", resolved)
    dataset = open_dataset(args.data, "det")
    step = max(1, len(dataset.samples) // max(args.images, 1))
    dataset.samples = dataset.samples[::step][: args.images]
    inputs = preprocessed_inputs(task, dataset, len(dataset.samples))
    fmaps = prob_maps(task, Path(resolved.path), inputs, args.threads)
    qmaps = prob_maps(task, args.int8, inputs, args.threads)
    pairs = np.array(
        [p for f, q in zip(fmaps, qmaps, strict=True) for p in candidate_scores(f, q, task.config)],
        dtype=float,
    ).reshape(-1, 2)
    print(f"{len(inputs)} images of {args.data}, {len(pairs)} FP32 candidate boxes")
    print("| FP32 box score | boxes | INT8 - FP32 score, mean | sd |\n|---|---|---|---|")
    for lo, hi in BANDS:
        m = (pairs[:, 0] >= lo) & (pairs[:, 0] < hi)
        if m.any():
            d = pairs[m, 1] - pairs[m, 0]
            print(f"| {lo:.1f}-{min(hi, 1.0):.1f} | {int(m.sum())} | {d.mean():+.4f} | {d.std():.4f} |")
    base = kept_boxes(fmaps, task.config, task.config.box_thresh)
    print(f"\nboxes kept: FP32 at box_thresh {task.config.box_thresh}: {base}")
    for t in THRESHOLDS:
        print(f"  INT8 at box_thresh {t}: {kept_boxes(qmaps, task.config, t)}")


if __name__ == "__main__":
    run_script(main)  # bad input: one line and exit 2, like the ocrquant CLI
