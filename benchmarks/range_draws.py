"""Which held-out criterion can choose ``auto``'s range method? The range candidates over calibration draws.

``--method auto`` quantizes the model once per range candidate (``method_search.CANDIDATES``) and keeps
one, judged on the calibration-side images the calibration pick left out (det: 60 of det_train's 200).
A criterion that measures the method picks the same candidate whatever images were drawn; one that
reads the draw's noise picks a different one each time. For each draw (``--seeds``: which 140 images
calibrate and which 60 are held out, as ``auto`` draws them) this script writes every candidate, with
the task's default algorithms and no accuracy algorithm, and reports three held-out figures of each:

- the task metric against the labels (det hmean);
- fidelity, the same metric scored against the float model's own predictions;
- the output loss ``distill`` learns on and ``auto`` ranks det by (det: binary cross-entropy of the
  INT8 map's logits against the float map; mean over the held-out images), lower is better;
- det: the boxes kept, against the float model's on the same images: a candidate that drops boxes
  raises the held-out hmean where most float boxes match no label (det_train: precision ~0.3) and
  lowers it where most do, so a label gain with fewer boxes is a shift, not fidelity.

Then which candidate each criterion picks per draw. No test image is read. Models and evaluations are
written under ``--out`` and reused when present, so an interrupted run resumes; a det draw takes about
five minutes on 2 cores (the first fills the calibration cache of its draw).

  python benchmarks/range_draws.py --seeds 0 1 2 --out runs/range-draws \\
      --calib ../shared/data/icdar2015/det_train
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from distill_draws import held_out_draw

from ocrquant.api import build_task, infer_task
from ocrquant.data import open_dataset
from ocrquant.errors import run_script
from ocrquant.evaluation.evaluate import EvalResult, cached_result, fidelity
from ocrquant.fileio import write_json_atomic
from ocrquant.quantization.algorithms.distill import output_losses
from ocrquant.quantization.config import QuantConfig
from ocrquant.tuning import quantize
from ocrquant.tuning.method_search import (
    CANDIDATES,
    VAL_SIZE,
    calib_size_leaving_validation,
    candidate_tag,
)
from ocrquant.zoo.resolve import resolve_model

#: criterion -> (row field, True where higher is better)
CRITERIA = {
    "labels": ("val_metric", True),
    "fidelity": ("val_fidelity", True),
    "output loss": ("val_loss", False),
}


def boxes(result: EvalResult) -> int | None:
    """Boxes predicted over the held-out images (det); None for another task."""
    counts = [s["figures"].get("det_care") for s in result.samples]
    return None if None in counts else int(sum(counts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ppocrv6-small-det", help="float model (zoo name or .onnx)")
    ap.add_argument("--task", default=None, help="default: the model's own")
    ap.add_argument("--calib", type=Path, required=True, help="calibration directory (det_train)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--calib-size", type=int, default=200, help="as `ocrquant quantize --calib-size`")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    resolved = resolve_model(args.model)
    task = build_task(infer_task(resolved, args.task), resolved)  # another task's model: one line
    calib = open_dataset(args.calib, task.name)
    val_size = VAL_SIZE.get(task.name, 200)
    calib_size = calib_size_leaving_validation(args.calib_size, len(calib.samples), val_size)
    args.out.mkdir(parents=True, exist_ok=True)  # after the checks: bad input leaves no folder
    float_model = onnx.load(resolved.path)

    rows = []
    for seed in args.seeds:
        draw = held_out_draw(calib, task, float_model, calib_size, val_size, seed)
        fp32 = cached_result(
            args.out / f"seed{seed}.fp32.val.json", lambda d=draw: d.evaluate(task, Path(resolved.path))
        )
        key = fp32.settings["primary_metric"]
        for method, options in CANDIDATES:
            model = args.out / f"seed{seed}.{candidate_tag(method, options)}.onnx"
            if not model.exists():
                cfg = QuantConfig(method=method, method_options=dict(options), calib_size=calib_size,
                                  seed=seed, holdout=draw.holdout, progress=False)  # fmt: skip
                quantize(resolved, task.name, calib, model, cfg)
            saved = args.out / f"seed{seed}.{candidate_tag(method, options)}.val.json"
            q = cached_result(saved, lambda m=model, d=draw: d.evaluate(task, m))
            rows.append({
                "seed": seed, "candidate": candidate_tag(method, options), "val_fp32": fp32.primary,
                "val_metric": q.primary, "val_fidelity": fidelity(task, q, fp32)[key],
                "val_loss": float(output_losses(onnx.load(str(model)), draw.inputs, draw.targets).mean()),
                "boxes": boxes(q), "fp32_boxes": boxes(fp32),
            })  # fmt: skip

    print(f"| draw | candidate | held-out {key} (FP32) | fidelity | output loss (vs the draw's lowest) "
          "| boxes (FP32) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    picks: dict[str, list[str]] = {c: [] for c in CRITERIA}
    for seed in args.seeds:
        draw = [r for r in rows if r["seed"] == seed]
        lowest = min(r["val_loss"] for r in draw)
        for r in draw:
            print(f"| {seed} | {r['candidate']} | {r['val_metric']:.4f} ({r['val_fp32']:.4f}) | "
                  f"{r['val_fidelity']:.4f} | {r['val_loss']:.6f} ({r['val_loss'] / lowest:.2f}) | "
                  f"{r['boxes']} ({r['fp32_boxes']}) |")  # fmt: skip
        for name, (field, higher) in CRITERIA.items():
            best = (max if higher else min)(draw, key=lambda r, f=field: r[f])
            picks[name].append(best["candidate"])
    for name, chosen in picks.items():
        print(f"{name} picks: {', '.join(chosen)} ({len(set(chosen))} distinct over {len(chosen)} draws)")
    write_json_atomic(args.out / "summary.json", {"rows": rows, "picks": picks, "mean_loss_ratio": {
        c: float(np.mean([r["val_loss"] / min(x["val_loss"] for x in rows if x["seed"] == r["seed"])
                          for r in rows if r["candidate"] == c]))
        for c in dict.fromkeys(r["candidate"] for r in rows)}})  # fmt: skip


if __name__ == "__main__":
    run_script(main)  # bad input: one line and exit 2, like the ocrquant CLI
