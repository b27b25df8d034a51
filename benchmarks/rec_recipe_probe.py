"""Which quantization recipe keeps a recogniser's readings: variants scored against FP32 on held-out crops.

Each variant is one ``quantize()`` of the same model with the same calibration pick (200 crops of the
calibration directory, seed 0; statistics collected once and cached), scored on ``--held-out`` other
crops of that directory (never the test set) by:

- ``frame``: the share of CTC time steps whose argmax equals FP32's (fine-grained, low noise);
- ``word``: the share of crops read exactly as FP32 reads them (fidelity);
- ``acc``: exact-match accuracy against the labels, and its change from FP32 (noisy on a few hundred).

  python benchmarks/rec_recipe_probe.py --model ppocrv6-small-rec \\
      --calib ../shared/data/icdar2015/rec_train --held-out 400 [--variants mse a16w8 ...]

Variants (``VARIANTS``): the four range methods ``auto`` tries, the three algorithms it validates on top
of MSE ranges, and the error budget (activations or weights at 16 bits on the same ranges, the
stand-in for "float" that keeps all else equal).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ocrquant.api import build_task
from ocrquant.data import load_image, open_dataset, sample_calibration
from ocrquant.errors import OcrQuantError, run_script
from ocrquant.quantization import QuantConfig
from ocrquant.quantization import targets as T
from ocrquant.runtime import RuntimeOptions, create_runner
from ocrquant.tuning import quantize
from ocrquant.zoo.resolve import resolve_model

VARIANTS: dict[str, dict[str, Any]] = {
    "min_max": {"method": "min_max"},
    "percentile-99.99": {"method": "percentile", "method_options": {"percentile": 99.99}},
    "percentile-99.999": {"method": "percentile", "method_options": {"percentile": 99.999}},
    "mse": {"method": "mse"},
    "mse+adaround": {"method": "mse", "extra_algorithms": ["adaround"]},
    "mse+bias_correction": {"method": "mse", "extra_algorithms": ["bias_correction"]},
    "mse+distill": {"method": "mse", "extra_algorithms": ["distill"]},
    "mse a16w8": {"method": "mse", "target": "ort-cpu+a16w8"},
    "mse a8w16": {"method": "mse", "target": "ort-cpu+a8w16"},
}
CALIB_SIZE = 200


def register_budget_targets() -> None:
    base = T.get_target("ort-cpu")
    T.register_target(dataclasses.replace(base, name="ort-cpu+a16w8", activation_dtype="int16"))
    T.register_target(dataclasses.replace(base, name="ort-cpu+a8w16", weight_dtype="int16"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ppocrv6-small-rec")
    ap.add_argument("--calib", type=Path, required=True)
    ap.add_argument("--held-out", type=int, default=400)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    args = ap.parse_args()
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise OcrQuantError(f"unknown variant(s) {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    register_budget_targets()
    model = resolve_model(args.model)
    task = build_task("rec", model)
    ds = open_dataset(args.calib, "rec")
    picked = {s.image_path for s in sample_calibration(ds, CALIB_SIZE, 0)}
    held = [s for s in ds.samples if s.image_path not in picked][: args.held_out]
    if not held:
        raise OcrQuantError("no crops left for the held-out set", args.calib)
    batches = [task.preprocess([load_image(s)]) for s in held]
    labels = [str(s.target).replace(" ", "") for s in held]

    def run(path: Path) -> tuple[list[np.ndarray], list[str], float]:
        runner = create_runner(path, "onnxruntime", RuntimeOptions(threads=2))
        frames, texts, t = [], [], time.perf_counter()
        for b in batches:
            out = runner.run({runner.input_names[0]: b.inputs})
            frames.append(out[0][0].argmax(-1))
            texts.append(task.postprocess(out, b)[0]["text"])
        return frames, texts, 1000 * (time.perf_counter() - t) / len(batches)

    def acc(texts: list[str]) -> float:
        return float(np.mean([t.replace(" ", "") == y for t, y in zip(texts, labels, strict=True)]))

    ref_frames, ref_texts, ref_ms = run(model.path)
    print(f"{args.model}: {len(held)} held-out crops, FP32 acc {acc(ref_texts):.4f}, {ref_ms:.1f} ms/crop")
    print(f"{'variant':22} {'frame':>7} {'word':>7} {'acc':>7} {'d acc pt':>9} {'quantize s':>11}")
    with tempfile.TemporaryDirectory(prefix="ocrquant-probe-") as tmp:
        for name in args.variants:
            out = Path(tmp) / f"{name.replace(' ', '_')}.onnx"
            cfg = QuantConfig(
                calib_size=CALIB_SIZE, cache_dir=Path(tmp) / "cache", progress=False, **VARIANTS[name]
            )
            t = time.perf_counter()
            quantize(model, "rec", ds, out, cfg)
            seconds = time.perf_counter() - t
            frames, texts, _ = run(out)
            frame = float(np.mean(np.concatenate([a == b for a, b in zip(frames, ref_frames, strict=True)])))
            word = float(np.mean([a == b for a, b in zip(texts, ref_texts, strict=True)]))
            delta = 100 * (acc(texts) - acc(ref_texts))
            print(
                f"{name:22} {frame:7.4f} {word:7.4f} {acc(texts):7.4f} {delta:+9.2f} {seconds:11.0f}",
                flush=True,
            )


if __name__ == "__main__":
    run_script(main)
