"""Noise floor of a benchmark: how far a FLOAT model's metric moves under imperceptible input noise.

Run: python benchmarks/noise_floor.py --task cls --model ppocrv3-cls --data ../shared/data/icdar2015/rec_test

Each run adds uniform integer noise in {-1, 0, +1} grey levels to every pixel of every decoded test
image (seeded, so runs repeat) and evaluates the float model on that. It prints the metric, its
change against the clean run, and the fidelity to the clean predictions (the share of decisions the
noise changed). An INT8 delta smaller than this spread is not a measurement of quantization; an INT8
model that changes several times more decisions than the noise does is where quantization shows.
"""

from __future__ import annotations

import argparse
import zlib
from pathlib import Path

import numpy as np

from ocrquant.api import build_task
from ocrquant.data import open_dataset
from ocrquant.data.types import Sample
from ocrquant.errors import run_script
from ocrquant.evaluation import evaluate, fidelity
from ocrquant.runtime import RuntimeOptions, create_runner
from ocrquant.zoo.resolve import resolve_model


def grey_level_noise(seed: int, amplitude: int = 1):
    """An image transform adding uniform integer noise in [-amplitude, amplitude], seeded per image."""

    def transform(image: np.ndarray, sample: Sample) -> np.ndarray:
        rng = np.random.default_rng([seed, zlib.crc32(sample.key.encode())])
        noisy = image.astype(np.int16) + rng.integers(-amplitude, amplitude + 1, size=image.shape)
        return np.clip(noisy, 0, 255).astype(np.uint8)

    return transform


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True, choices=["det", "cls", "rec"])
    ap.add_argument("--model", required=True, help="zoo name or .onnx")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--amplitude", type=int, default=1, help="grey levels")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    model = resolve_model(args.model)
    task = build_task(args.task, model)
    dataset = open_dataset(args.data, args.task)
    runner = create_runner(model.path, "onnxruntime", RuntimeOptions(threads=args.threads))
    clean = evaluate(task, runner, dataset, progress=False)
    primary = clean.settings["primary_metric"]
    print(f"{args.model} on {args.data} ({len(dataset.samples)} samples): {primary} {clean.primary:.4f}")
    for seed in range(args.seeds):
        noisy = evaluate(
            task, runner, dataset, progress=False, image_transform=grey_level_noise(seed, args.amplitude),
            extra_settings={"noise": f"uniform +-{args.amplitude}, seed {seed}"},
        )  # fmt: skip
        fid = fidelity(task, noisy, clean)[primary]
        print(
            f"  +-{args.amplitude} grey level, seed {seed}: {primary} {noisy.primary:.4f} "
            f"({100 * (noisy.primary - clean.primary):+.2f} pt), fidelity to clean {fid:.4f}"
        )


if __name__ == "__main__":
    run_script(main)  # bad input: one line and exit 2, like the ocrquant CLI
