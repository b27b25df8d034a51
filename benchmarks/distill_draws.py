"""Does ``distill`` help? The same recipe with and without it, over several calibration draws.

det's 60 held-out det_train images cannot tell two INT8 variants apart (a box is worth 0.4 pt of
hmean there), and one draw of the test set cannot either (standard error 0.5 pt; cls 0.4). So this
script repeats the comparison over calibration draws (``--seeds``), and for each draw reports three
figures of each model:

- held-out (the images ``auto`` would hold out for that seed: det 60, cls 2000): the task metric,
  fidelity, and the output loss distill learns on (det: binary cross-entropy of the INT8 map's logits
  against the float map; cls: cross-entropy against the float class distribution; per input): dense
  and label-free, the direct test of whether what was learned carries over;
- test (``--test``): the metric, its paired 95 % interval against FP32, fidelity.

Recipe: one fixed range method per task, so that only ``distill`` differs (det: percentile 99.99,
140 images; cls: percentile 99.999, 200 crops) plus bias correction, then the same plus ``distill``
run for each number of passes over the learning data in ``--passes`` (default: 1, distill's
default); the held-out images
are withheld from all (``QuantConfig.holdout``), as in ``auto``. The seconds column is the run's
qdq-stage time (bias correction, plus distill where it runs). Models and evaluations are written under
``--out`` and reused when present, so an interrupted run resumes. One det draw with ``--passes 1 3``
took 14 minutes on the 2-core AMX Xeon (without ``--test``); a cls draw about 4 on 2 cores.

  python benchmarks/distill_draws.py --seeds 0 1 2 --out runs/det-distill-draws \\
      --calib ../shared/data/icdar2015/det_train --test ../shared/data/icdar2015/det_test
  python benchmarks/distill_draws.py --task cls --model ppocrv3-cls --seeds 0 1 2 \\
      --out runs/cls-distill-draws --calib ../shared/data/icdar2015/rec_train \\
      --test ../shared/data/icdar2015/rec_test
  python benchmarks/distill_draws.py --seeds 0 --passes 1 3 --out runs/det-distill-passes \\
      --calib ../shared/data/icdar2015/det_train
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ocrquant.api import build_task, eval_model, infer_task
from ocrquant.data import Dataset, open_dataset
from ocrquant.data.calibration import image_id
from ocrquant.data.split import split_calibration
from ocrquant.errors import OcrQuantError, run_script
from ocrquant.evaluation import evaluate
from ocrquant.evaluation.evaluate import EvalResult, cached_result, fidelity, preprocessed_inputs
from ocrquant.evaluation.significance import paired_delta_interval
from ocrquant.fileio import read_sidecar, write_json_atomic
from ocrquant.quantization.algorithms.distill import float_logits, output_losses
from ocrquant.quantization.config import QuantConfig
from ocrquant.runtime import RuntimeOptions, create_runner
from ocrquant.tasks import Task
from ocrquant.tuning import quantize
from ocrquant.zoo.resolve import resolve_model

BASE = ["bias_correction"]
#: task -> (percentile auto picked for the shipped model, calibration inputs, held-out inputs)
RECIPES = {"det": (99.99, 140, 60), "cls": (99.999, 200, 2000)}
OPTS = RuntimeOptions(threads=2, spinning=False)


@dataclass
class HeldOutDraw:
    """One calibration draw as ``auto`` makes it: the held-out image ids (withheld from calibration and
    learning), the held-out images, their preprocessed inputs and the float model's output logits."""

    holdout: list[str]
    validation: Dataset
    inputs: list[np.ndarray]
    targets: list[np.ndarray]

    def evaluate(self, task: Task, path: Path) -> EvalResult:
        """``path`` (onnxruntime, 2 threads, spinning off) scored on the held-out images."""
        runner = create_runner(path, "onnxruntime", OPTS)
        return evaluate(task, runner, self.validation, model_name=path.stem, progress=False)


def held_out_draw(
    calib: Dataset, task: Task, float_model: onnx.ModelProto, calib_size: int, val_size: int, seed: int
) -> HeldOutDraw:
    """Draw ``seed``'s split of ``calib`` (``split_calibration``, as ``auto`` draws it) and prepare its
    held-out images once for every model compared on them."""
    split = split_calibration(calib, calib_size, seed, val_size)
    val = Dataset(calib.root, calib.task, calib.format, split.validation)
    inputs = preprocessed_inputs(task, val, len(val.samples))
    holdout = sorted({image_id(s) for s in split.validation})
    return HeldOutDraw(holdout, val, inputs, float_logits(float_model, inputs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="det", choices=sorted(RECIPES))
    ap.add_argument("--model", default="ppocrv3-det", help="float model (zoo name or .onnx)")
    ap.add_argument("--calib", type=Path, required=True, help="calibration directory (det_train, rec_train)")
    ap.add_argument("--test", type=Path, help="test directory; omitted: held-out figures only")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--calib-size", type=int, default=None, help="default: the task's recipe")
    ap.add_argument("--val-size", type=int, default=None, help="default: the task's recipe")
    ap.add_argument("--passes", type=int, nargs="+", default=[1], help="distill's passes over its data")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    percentile, calib_size, val_size = RECIPES[args.task]
    calib_size, val_size = args.calib_size or calib_size, args.val_size or val_size
    if min(args.passes) < 1:
        raise OcrQuantError("--passes: each count must be at least 1")
    # variant -> (algorithms after the target's, distill's options): a pass count exactly
    variants = {"base": (BASE, {})} | {
        f"distill-{p}": ([*BASE, "distill"], {"distill": {"epochs": p, "min_steps": 1}}) for p in args.passes
    }

    resolved = resolve_model(args.model)
    task = build_task(infer_task(resolved, args.task), resolved)  # another task's model: one line
    calib = open_dataset(args.calib, task.name)
    args.out.mkdir(parents=True, exist_ok=True)  # after the checks: bad input leaves no folder
    fp32_test = None
    if args.test:
        fp32_test = cached_result(
            args.out / "fp32.test.json",
            lambda: eval_model(resolved.path, args.test, task=task.name, runtime=OPTS, progress=True),
        )
    float_model = onnx.load(resolved.path)

    rows = []
    for seed in args.seeds:
        draw = held_out_draw(calib, task, float_model, calib_size, val_size, seed)
        holdout, inputs, targets = draw.holdout, draw.inputs, draw.targets
        fp32_val = cached_result(
            args.out / f"seed{seed}.fp32.val.json", lambda d=draw: d.evaluate(task, Path(resolved.path))
        )
        key = fp32_val.settings["primary_metric"]
        losses: dict[str, np.ndarray] = {}
        for variant, (algos, options) in variants.items():
            model = args.out / f"seed{seed}.{variant}.onnx"
            if not model.exists():
                cfg = QuantConfig(
                    method="percentile",
                    method_options={"percentile": percentile},
                    calib_size=calib_size,
                    seed=seed,
                    extra_algorithms=algos,
                    algorithm_options=options,
                    holdout=holdout,
                )
                quantize(resolved, task.name, calib, model, cfg)
            q_val = cached_result(
                args.out / f"seed{seed}.{variant}.val.json", lambda m=model, d=draw: d.evaluate(task, m)
            )
            losses[variant] = output_losses(onnx.load(str(model)), inputs, targets)
            row = {
                "seed": seed,
                "variant": variant,
                "val_metric": q_val.primary,
                "val_fp32": fp32_val.primary,
                "val_fidelity": fidelity(task, q_val, fp32_val)[key],
                "val_loss": float(losses[variant].mean()),
                "val_loss_vs_base": float(losses[variant].mean() / losses["base"].mean()),
                "qdq_stage_seconds": round(read_sidecar(model)["timings"]["write_s"], 1),
            }
            if variant != "base":
                lower = int((losses[variant] < losses["base"]).sum())
                row["val_loss_lower_on_inputs"] = f"{lower}/{len(inputs)}"
            if fp32_test is not None:
                q_test = cached_result(
                    args.out / f"seed{seed}.{variant}.test.json",
                    lambda m=model: eval_model(m, args.test, task=task.name, runtime=OPTS, progress=True),
                )
                iv = paired_delta_interval(task.new_metric(), fp32_test.samples, q_test.samples)
                row |= {
                    "test_metric": q_test.primary,
                    "test_delta_pt": 100 * (q_test.primary - fp32_test.primary),
                    "test_ci95_pt": [100 * iv["low"], 100 * iv["high"]] if iv else None,
                    "test_fidelity": fidelity(task, q_test, fp32_test)[key],
                }
            rows.append(row)

    print(
        f"| draw | variant | seconds | held-out {key} (FP32) | held-out fidelity | held-out output loss "
        f"(vs base) | test {key} | delta pt (95 %) | test fidelity |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        test = "| |"
        if "test_metric" in r:
            lo, hi = r["test_ci95_pt"] or (float("nan"), float("nan"))
            test = f"{r['test_metric']:.4f} | {r['test_delta_pt']:+.2f} ({lo:+.2f}..{hi:+.2f})"
            test += f" | {r['test_fidelity']:.4f}"
        print(
            f"| {r['seed']} | {r['variant']} | {r['qdq_stage_seconds']:.0f} | {r['val_metric']:.4f} "
            f"({r['val_fp32']:.4f}) | {r['val_fidelity']:.4f} | {r['val_loss']:.6f} "
            f"({r['val_loss_vs_base']:.2f}) | {test} |"
        )
    for variant in variants:
        sel = [r for r in rows if r["variant"] == variant and "test_delta_pt" in r]
        if sel:
            delta = np.mean([r["test_delta_pt"] for r in sel])
            fid = np.mean([r["test_fidelity"] for r in sel])
            print(f"{variant}: mean test delta {delta:+.2f} pt, test fidelity {fid:.4f}, {len(sel)} draws")
    write_json_atomic(args.out / "summary.json", {"rows": rows})


if __name__ == "__main__":
    run_script(main)  # bad input: one line and exit 2, like the ocrquant CLI
