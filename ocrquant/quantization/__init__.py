"""Post-training INT8 quantization of OCR models (QDQ ONNX), with ranges this library owns.

``quantize(model, task, calib_data, output, QuantConfig(...)) -> QuantResult`` runs the whole
workflow; the pieces (prepare, calibration, targets, QDQ writer, algorithms) are usable alone.
"""

from ocrquant.fileio import sidecar_path
from ocrquant.quantization.config import QuantConfig, QuantResult
from ocrquant.quantization.graph import is_quantized
from ocrquant.quantization.pipeline import quantize
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
    "quantize",
    "sidecar_path",
]
