"""End-to-end OCR: detection -> crop -> direction classification -> recognition, as PaddleOCR chains them."""

from ocrquant.pipeline.build import (
    DEFAULT_MODELS,
    PipelineSpec,
    build_pipeline,
    int8_model_path,
    load_stage,
    resolve_stage_model,
)
from ocrquant.pipeline.core import OcrLine, OcrPipeline, OcrResult, PipelineConfig, StageModel, run_task
from ocrquant.pipeline.geometry import crop_text_region, get_rotate_crop_image, sorted_boxes

__all__ = [
    "DEFAULT_MODELS",
    "OcrLine",
    "OcrPipeline",
    "OcrResult",
    "PipelineConfig",
    "PipelineSpec",
    "StageModel",
    "build_pipeline",
    "crop_text_region",
    "get_rotate_crop_image",
    "int8_model_path",
    "load_stage",
    "resolve_stage_model",
    "run_task",
    "sorted_boxes",
]
