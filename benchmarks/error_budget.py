"""Where does an INT8 model's error come from: its weights or its activations?

The same recipe (range method, algorithms, calibration pick) is quantized four times, with activations
and weights each either 8-bit (the target's types) or 16-bit on the same calibrated ranges. 16-bit is the
stand-in for "float" that keeps everything else equal: the same clipping, the same graph, the same
bias correction. Each model is scored on held-out images of the calibration directory (never the test
set) against labels and against the FP32 model's own predictions (fidelity, the quantity quantization
controls):

- ``a8w8``: the model as it ships;
- ``a8w16``: activations alone at 8 bits: what the activation grids cost;
- ``a16w8``: weights alone at 8 bits: what the weight grids cost;
- ``a16w16``: neither: what the calibrated clipping alone costs.

With ``--bands N`` it then asks *where* the activation error enters: the shipped model's quantized
activation tensors, in graph order, are cut into N bands of about equal count, and each band alone is
kept at 16 bits (``--int16`` on those tensors; everything else as shipped). A band that holds most
of the error brings fidelity near ``a16w8``'s; bands that each recover a little say the error is spread
through the network, where keeping a few tensors wide cannot buy it back.

Why: an accuracy-recovery method acts on one side (AdaRound and weight distillation on weights,
range search and equalisation on activations). This says which side holds the loss before one is tried.
The 16-bit models run in onnxruntime's float kernels (com.microsoft Q/DQ); they are for measuring only.

  python benchmarks/error_budget.py --task cls --model ppocrv3-cls \\
      --calib ../shared/data/icdar2015/rec_train --method percentile --option percentile=99.999 \\
      --out runs/error-budget-cls
  python benchmarks/error_budget.py --task rec --model ppocrv6-small-rec \\
      --calib ../shared/data/icdar2015/rec_train --method mse --algo hs_cle --algo bias_correction \\
      --bands 5 --out runs/error-budget-v6rec
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import onnx

from ocrquant.api import build_task, infer_task
from ocrquant.data import Dataset, open_dataset
from ocrquant.data.calibration import image_id
from ocrquant.data.split import split_calibration
from ocrquant.errors import run_script
from ocrquant.evaluation import evaluate
from ocrquant.evaluation.evaluate import EvalResult, cached_result, fidelity
from ocrquant.quantization import targets
from ocrquant.quantization.config import QuantConfig
from ocrquant.runtime import RuntimeOptions, create_runner
from ocrquant.tuning import quantize
from ocrquant.zoo.resolve import resolve_model

#: variant -> (activation type, weight type); None keeps the target's own
VARIANTS: dict[str, tuple[str | None, str | None]] = {
    "a8w8": (None, None),
    "a8w16": (None, "int16"),
    "a16w8": ("int16", None),
    "a16w16": ("int16", "int16"),
}
OPTS = RuntimeOptions(threads=2, spinning=False)


def variant_target(base: targets.TargetProfile, name: str) -> str:
    """Register the base target with this variant's integer types; its name."""
    act, weight = VARIANTS[name]
    changes: dict[str, Any] = {"name": f"{base.name}+{name}"}
    if act:
        changes["activation_dtype"] = act
    if weight:
        # weight_width narrows weights to what 8-bit kernels take; 16-bit weights have no such kernel
        changes |= {
            "weight_dtype": weight,
            "weight_dtype_without_vnni": None,
            "default_algorithms": tuple(a for a in base.default_algorithms if a != "weight_width"),
            "task_algorithms": {
                t: tuple(a for a in algos if a != "weight_width") for t, algos in base.task_algorithms.items()
            },
        }
    profile = dataclasses.replace(base, **changes)
    targets.TARGETS[profile.name] = profile
    return profile.name


def activation_bands(qmodel: onnx.ModelProto, n: int) -> list[list[str]]:
    """The float tensors ``qmodel`` quantizes (each QuantizeLinear's input that no initializer feeds),
    in graph order, cut into ``n`` bands of about equal count."""
    constants = {i.name for i in qmodel.graph.initializer}
    names = list(dict.fromkeys(
        node.input[0] for node in qmodel.graph.node
        if node.op_type == "QuantizeLinear" and node.input[0] not in constants
    ))  # fmt: skip
    edges = [round(i * len(names) / n) for i in range(n + 1)]
    return [names[lo:hi] for lo, hi in zip(edges, edges[1:], strict=False) if hi > lo]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True, help="det, cls or rec")
    ap.add_argument("--model", required=True, help="float model (zoo name or .onnx)")
    ap.add_argument("--calib", type=Path, required=True, help="calibration directory (training split)")
    ap.add_argument("--target", default="ort-cpu")
    ap.add_argument("--method", default="percentile", help="range method (auto is not offered: one recipe)")
    ap.add_argument("--option", action="append", default=[], help="method option k=v, e.g. percentile=99.999")
    ap.add_argument(
        "--algo", action="append", default=None, help="extra algorithm, repeatable (default: bias_correction)"
    )
    ap.add_argument("--calib-size", type=int, default=200)
    ap.add_argument("--val-size", type=int, default=2000, help="held-out samples of --calib")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bands", type=int, default=0, help="16-bit activations in one of N bands at a time")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    resolved = resolve_model(args.model)
    task = build_task(infer_task(resolved, args.task), resolved)
    calib = open_dataset(args.calib, task.name)
    base = targets.get_target(args.target)
    options = {k: float(v) for k, v in (o.split("=", 1) for o in args.option)}
    algos = ["bias_correction"] if args.algo is None else args.algo
    split = split_calibration(calib, args.calib_size, args.seed, args.val_size)
    val = Dataset(calib.root, calib.task, calib.format, split.validation)
    args.out.mkdir(parents=True, exist_ok=True)  # after the checks: bad input leaves no folder

    def held_out(path: Path, name: str) -> EvalResult:
        runner = create_runner(path, "onnxruntime", OPTS)
        return evaluate(task, runner, val, model_name=name, progress=True)

    fp32 = cached_result(args.out / "fp32.val.json", lambda: held_out(Path(resolved.path), "fp32"))
    rows = []

    def score(name: str, target: str, wide: list[str]) -> None:
        model = args.out / f"{name}.onnx"
        if not model.exists():
            cfg = QuantConfig(
                method=args.method,
                method_options=options,
                target=target,
                calib_size=args.calib_size,
                seed=args.seed,
                extra_algorithms=algos,
                holdout=sorted({image_id(s) for s in split.validation}),
                dtype_overrides={t: "int16" for t in wide},
            )
            quantize(resolved, task.name, calib, model, cfg)
        res = cached_result(args.out / f"{name}.val.json", lambda: held_out(model, name))
        rows.append((name, res.primary, fidelity(task, res, fp32)[fp32.settings["primary_metric"]]))

    for name in VARIANTS:
        score(name, variant_target(base, name), [])
    bands = activation_bands(onnx.load(args.out / "a8w8.onnx"), args.bands) if args.bands > 0 else []
    for i, band in enumerate(bands):
        score(f"a16-band{i + 1}of{len(bands)}-{len(band)}t", base.name, band)

    metric = fp32.settings["primary_metric"]
    print(
        f"\n{task.name} {resolved.name}, {len(val.samples)} held-out samples of {calib.root}, "
        f"FP32 {metric} {fp32.primary:.4f}; {args.method} {options}, algorithms +{algos}"
    )
    print(f"| variant | {metric} | delta pt | fidelity to FP32 | 1 - fidelity |")
    print("|---|---|---|---|---|")
    for name, value, fid in rows:
        print(f"| {name} | {value:.4f} | {100 * (value - fp32.primary):+.2f} | {fid:.4f} | {1 - fid:.2%} |")


if __name__ == "__main__":
    run_script(main)
