"""Post-training INT8 quantization of OCR models (QDQ ONNX), with ranges this library owns.

``quantize_recipe(resolve_model(spec), task, open_dataset(folder, task), output, QuantConfig(...))``
runs one recipe (range method + algorithms) on the model and calibration set resolved and opened once
by the caller; the pieces (prepare, calibration, targets, QDQ writer, algorithms) are usable alone.
``method="auto"``, the default, is a search over recipes: :func:`ocrquant.tuning.quantize`.
"""

from ocrquant.fileio import sidecar_path
from ocrquant.quantization.config import QuantConfig, QuantResult
from ocrquant.quantization.graph import is_quantized
from ocrquant.quantization.pipeline import quantize_recipe
from ocrquant.quantization.prepare import max_abs_diff, prepare_model
from ocrquant.quantization.targets import TARGETS, TargetProfile, get_target

__all__ = [
    "TARGETS",
    "QuantConfig",
    "QuantResult",
    "TargetProfile",
    "get_target",
    "is_quantized",
    "max_abs_diff",
    "prepare_model",
    "quantize_recipe",
    "sidecar_path",
]
