"""Text-direction classification (0 / 180 degrees), as PaddleOCR's ``predict_cls`` runs it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ocrquant.metrics.cls import ClsMetric
from ocrquant.tasks.base import Batch, Metric, Task, register_task


@dataclass
class ClsConfig:
    image_shape: tuple[int, int, int] = (3, 48, 192)
    labels: list[str] = field(default_factory=lambda: ["0", "180"])
    thresh: float = 0.9  # used by the OCR pipeline to decide whether to turn a crop


def resize_norm_pad(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize to ``height`` keeping the ratio (capped at ``width``), scale to [-1, 1], zero-pad right.

    Shared by cls and rec: PaddleOCR's two ``resize_norm_img`` functions are this same rule.
    """
    h, w = image.shape[:2]
    ratio = w / float(h)
    resized_w = width if math.ceil(height * ratio) > width else int(math.ceil(height * ratio))
    resized = cv2.resize(image, (resized_w, height)).astype(np.float32)
    resized = resized.transpose(2, 0, 1) / 255
    resized -= 0.5
    resized /= 0.5
    out = np.zeros((3, height, width), dtype=np.float32)
    out[:, :, :resized_w] = resized
    return out


@register_task("cls")
class ClsTask(Task):
    """0/180 direction classifier (PP-OCR mobile cls models)."""

    Config = ClsConfig
    output_layout = (None, None)
    output_layout_text = "N x classes"

    def preprocess(self, images: list[np.ndarray]) -> Batch:
        _, h, w = self.config.image_shape
        return Batch(np.stack([resize_norm_pad(im, h, w) for im in images]), [{} for _ in images])

    def postprocess(self, outputs: list[np.ndarray], batch: Batch) -> list[dict[str, Any]]:
        probs = outputs[0]
        idx = probs.argmax(axis=1)
        return [
            {"index": int(i), "label": self.config.labels[int(i)], "score": round(float(probs[n, i]), 6)}
            for n, i in enumerate(idx)
        ]

    def new_metric(self) -> Metric:
        return ClsMetric()

    def sort_key(self, image: np.ndarray) -> float:
        return image.shape[1] / float(image.shape[0])
