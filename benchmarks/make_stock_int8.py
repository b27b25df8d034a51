"""Development INT8 models from onnxruntime's stock ``quantize_static`` (until ocrquant.quantization lands).

Run: python benchmarks/make_stock_int8.py [--out runs/stock-int8] [--calib 32]
Recipe (the common "stock" baseline): convert to opset 13 (per-channel QDQ needs axis support), run
onnxruntime's ORT_ENABLE_BASIC optimizer once (folds BatchNorm etc. so quantization sees the deployed
graph), then ``quantize_static`` with QDQ format, per-channel QInt8 weights, QInt8 activations, MinMax,
calibrated on the ICDAR2015 *training* sets (det_train / rec_train), never the test sets.
``--activations u8`` makes QUInt8 activations instead (U8S8): on an x86 CPU without VNNI onnxruntime
fuses U8S8 Q/DQ around every Conv into QLinearConv, while with S8S8 it leaves many Convs in float
between QuantizeLinear/DequantizeLinear (measured here: see the report of the bench task).
Writes OUT/{det,cls,rec}.int8.onnx and prints their sizes.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import version_converter
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from ocrquant.api import build_task
from ocrquant.data import load_image, open_dataset, sample_calibration
from ocrquant.fileio import atomic_path
from ocrquant.zoo.resolve import resolve_model

SHARED = Path(__file__).resolve().parents[2] / "shared/data/icdar2015"
JOBS = {
    "det": ("ppocrv3-det", "det_train", 1),
    "cls": ("ppocrv3-cls", "rec_train", 8),
    "rec": ("ppocrv3-rec", "rec_train", 8),
}


class _Reader(CalibrationDataReader):
    def __init__(self, name: str, batches: list[np.ndarray]) -> None:
        self._it = iter([{name: b} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def calib_batches(task_name: str, model: str, data: Path, n: int, batch: int) -> list[np.ndarray]:
    resolved = resolve_model(model)
    task = build_task(task_name, resolved, {})
    samples = sample_calibration(open_dataset(data, task_name), n, seed=0)
    images = [load_image(s) for s in samples]
    return [task.preprocess(images[i : i + batch]).inputs for i in range(0, len(images), batch)]


def stock_quantize(
    fp32: Path, out: Path, batches: list[np.ndarray], act_type: QuantType = QuantType.QInt8
) -> Path:
    """opset 13 -> ORT basic optimisation -> QDQ per-channel QInt8 quantize_static; written atomically."""
    with tempfile.TemporaryDirectory() as tmp:
        m13 = Path(tmp) / "opset13.onnx"
        onnx.save(version_converter.convert_version(onnx.load(str(fp32)), 13), str(m13))
        opt = Path(tmp) / "basic.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(opt)
        ort.InferenceSession(str(m13), so, providers=["CPUExecutionProvider"])
        name = onnx.load(str(opt), load_external_data=False).graph.input[0].name
        with atomic_path(out) as tmp_out:
            quantize_static(
                str(opt),
                str(tmp_out),
                _Reader(name, batches),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                weight_type=QuantType.QInt8,
                activation_type=act_type,
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--out", type=Path, default=Path("runs/stock-int8"))
    ap.add_argument("--calib", type=int, default=32, help="calibration images per task (training split)")
    ap.add_argument("--tasks", nargs="+", default=list(JOBS))
    ap.add_argument("--activations", choices=["s8", "u8"], default="s8", help="activation type (weights: s8)")
    args = ap.parse_args()
    for task_name in args.tasks:
        model, folder, batch = JOBS[task_name]
        batches = calib_batches(task_name, model, args.shared / folder, args.calib, batch)
        act = QuantType.QInt8 if args.activations == "s8" else QuantType.QUInt8
        out = stock_quantize(resolve_model(model).path, args.out / f"{task_name}.int8.onnx", batches, act)
        print(f"{task_name}: {out} {out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
