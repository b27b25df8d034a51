"""KL calibration with and without its MSE guard, on held-out training images.

``EntropyCalibrator(mse_guard=True)`` keeps a KL threshold only where its expected squared error over
the observed histogram is no larger than the unclipped range's. This measures what that does on the
det models at the vendor workflow's fixed 512x896 input (50 calibration images): calibration draws
from det_train images 1-100, the hmean is taken on det_train images 101-200 (never calibrated on,
never the test set), float and both INT8 variants on the same images.

Run: python benchmarks/kl_guard.py [--data ../shared/data/icdar2015] [--targets npu-pow2 ort-cpu]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ocrquant.api import build_task, input_shape_options
from ocrquant.data import open_dataset
from ocrquant.evaluation import evaluate
from ocrquant.quantization import QuantConfig
from ocrquant.runtime import RuntimeOptions, create_runner
from ocrquant.tuning import quantize
from ocrquant.zoo.resolve import resolve_model

SHAPE = (1, 3, 512, 896)


def split(det_train: Path, root: Path) -> tuple[Path, Path]:
    """det_train as two labelled folders of links: images 1-100 (calibration) and 101-200 (held out)."""
    parts = []
    for name, ids in (("calib", range(1, 101)), ("holdout", range(101, 201))):
        folder = root / name
        (folder / "images").mkdir(parents=True)
        (folder / "gt").mkdir()
        for i in ids:
            (folder / "images" / f"img_{i}.jpg").symlink_to(det_train / "images" / f"img_{i}.jpg")
            (folder / "gt" / f"gt_img_{i}.txt").symlink_to(det_train / "gt" / f"gt_img_{i}.txt")
        parts.append(folder)
    return parts[0], parts[1]


def hmean(model: Path, task, holdout) -> float:
    runner = create_runner(model, "onnxruntime", RuntimeOptions(threads=2))
    return evaluate(task, runner, holdout, model_name=model.stem, progress=False).primary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/icdar2015"))
    parser.add_argument("--models", nargs="+", default=["ppocrv4-det", "ppocrv3-det"])
    parser.add_argument("--targets", nargs="+", default=["npu-pow2", "ort-cpu"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        calib_dir, hold_dir = split((args.data / "det_train").resolve(), Path(tmp))
        calib, holdout = open_dataset(calib_dir, "det"), open_dataset(hold_dir, "det")
        print("| model | target | float | KL | KL + MSE guard |\n|---|---|---|---|---|")
        for name in args.models:
            model = resolve_model(name)
            task = build_task("det", model, input_shape_options("det", SHAPE))
            fp32 = hmean(model.path, task, holdout)
            for target in args.targets:
                figures = []
                for guard in (False, True):
                    out = Path(tmp) / f"{name}-{target}-{guard}.onnx"
                    cfg = QuantConfig(
                        target=target, method="kl", method_options={"mse_guard": guard}, calib_size=50,
                        batch_size=1, task_options=input_shape_options("det", SHAPE), progress=False,
                    )  # fmt: skip
                    quantize(model, "det", calib, out, cfg)
                    figures.append(hmean(out, task, holdout))
                print(f"| {name} | {target} | {fp32:.4f} | {figures[0]:.4f} | {figures[1]:.4f} |", flush=True)


if __name__ == "__main__":
    main()
