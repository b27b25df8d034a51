"""OCR metrics with PaddleOCR's semantics, so figures compare with the ones models are published with."""

from ocrquant.metrics.base import Metric
from ocrquant.metrics.cls import ClsMetric
from ocrquant.metrics.det_iou import DetMetric, ImageResult, evaluate_image
from ocrquant.metrics.rec import RecMetric, normalize_alnum, remove_spaces

__all__ = [
    "Metric",
    "ClsMetric",
    "DetMetric",
    "ImageResult",
    "RecMetric",
    "evaluate_image",
    "normalize_alnum",
    "remove_spaces",
]
