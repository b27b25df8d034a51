"""Calibration: streamed activation statistics, cached, and range methods over them."""

from ocrquant.quantization.calibration.cache import cache_key, load_cached, save_cached
from ocrquant.quantization.calibration.calibrators import (
    CALIBRATORS,
    Calibrator,
    EntropyCalibrator,
    MinMaxCalibrator,
    MSECalibrator,
    PercentileCalibrator,
    QSpec,
    abs_histogram,
    create_calibrator,
    register_calibrator,
)
from ocrquant.quantization.calibration.stats import (
    CalibrationStats,
    TensorStats,
    augment_model,
    collect_statistics,
    iterate_outputs,
)

__all__ = [
    "CALIBRATORS",
    "CalibrationStats",
    "Calibrator",
    "EntropyCalibrator",
    "MSECalibrator",
    "MinMaxCalibrator",
    "PercentileCalibrator",
    "QSpec",
    "TensorStats",
    "abs_histogram",
    "augment_model",
    "cache_key",
    "collect_statistics",
    "create_calibrator",
    "iterate_outputs",
    "load_cached",
    "register_calibrator",
    "save_cached",
]
