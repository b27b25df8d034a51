"""Text detection with DB (Differentiable Binarization), as PaddleOCR's ``predict_det`` runs it.

Preprocess = ``DetResizeForTest`` + ``NormalizeImage`` (ImageNet mean/std applied to the BGR
channels as they are, PaddleOCR's quirk) + CHW; postprocess = ``DBPostProcess`` followed by
``filter_tag_det_res``. Every threshold is an option because users tune them per deployment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import pyclipper
from shapely.geometry import Polygon

from ocrquant.data.types import max_image_pixels
from ocrquant.errors import OcrQuantError
from ocrquant.metrics.det_iou import DetMetric
from ocrquant.tasks.base import Batch, Metric, Task, register_task

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass
class DetConfig:
    """``DetResizeForTest`` and ``DBPostProcess`` settings (PaddleOCR inference defaults)."""

    limit_side_len: int = 960
    limit_type: str = "max"  # "max" | "min" | "resize_long"
    # cap on the longer side after the limit rule (0: none); "min" alone would feed a 4000 px photo whole
    max_side_len: int = 0
    # NormalizeImage: PP-OCRv3/v4 use ImageNet's, rapidocr 3.10 feeds PP-OCRv6 with 0.5 / 0.5
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    input_shape: tuple[int, int] | None = None  # fixed (H, W), e.g. (512, 896): plain resize, no ratio kept
    thresh: float = 0.3
    box_thresh: float = 0.6
    unclip_ratio: float = 1.5
    max_candidates: int = 1000
    score_mode: str = "fast"  # "fast" | "slow"
    box_type: str = "quad"  # "quad" | "poly"
    use_dilation: bool = False
    min_size: int = 3

    def __post_init__(self) -> None:
        """Refuse settings the network or the post-processing cannot honour, before any image runs:
        DB detectors downsample by 32 (a 33x47 input fails deep inside onnxruntime), thresholds are
        probabilities, the unclip ratio a positive scale."""
        if self.input_shape is not None:
            h, w = (int(v) for v in self.input_shape)
            if h <= 0 or w <= 0 or h % 32 or w % 32:
                raise OcrQuantError(
                    f"--input-shape {h}x{w}: det needs positive heights and widths that are multiples of 32"
                )

            if h * w > max_image_pixels():
                raise OcrQuantError(f"--input-shape {h}x{w}: over the limit of {max_image_pixels()} pixels")
        if not 32 <= self.limit_side_len <= 32768:
            raise OcrQuantError(f"--limit-side-len {self.limit_side_len}: between 32 and 32768")
        for name in ("thresh", "box_thresh"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise OcrQuantError(f"--{name.replace('_', '-')} {value}: a probability between 0 and 1")
        if not self.unclip_ratio > 0:
            raise OcrQuantError(f"--unclip-ratio {self.unclip_ratio}: must be > 0")


def det_resize(image: np.ndarray, cfg: DetConfig) -> tuple[np.ndarray, float, float]:
    """PaddleOCR ``DetResizeForTest``: returns the resized image and (ratio_h, ratio_w)."""
    h, w = image.shape[:2]
    if cfg.input_shape is not None:
        rh, rw = cfg.input_shape
    else:
        if cfg.limit_type == "max":
            ratio = cfg.limit_side_len / max(h, w) if max(h, w) > cfg.limit_side_len else 1.0
        elif cfg.limit_type == "min":
            ratio = cfg.limit_side_len / min(h, w) if min(h, w) < cfg.limit_side_len else 1.0
        elif cfg.limit_type == "resize_long":
            ratio = cfg.limit_side_len / max(h, w)
        else:
            raise OcrQuantError(f"unknown limit_type '{cfg.limit_type}' (max, min, resize_long)")
        if cfg.max_side_len and max(h, w) * ratio > cfg.max_side_len:
            ratio = cfg.max_side_len / max(h, w)
        rh = max(int(round(int(h * ratio) / 32) * 32), 32)
        rw = max(int(round(int(w * ratio) / 32) * 32), 32)
    resized = cv2.resize(image, (int(rw), int(rh)))
    return resized, rh / float(h), rw / float(w)


def normalize_det(
    image: np.ndarray, mean: np.ndarray = IMAGENET_MEAN, std: np.ndarray = IMAGENET_STD
) -> np.ndarray:
    """``NormalizeImage`` (scale 1/255, mean/std on the BGR channels as they are) then HWC -> CHW."""
    out = (image.astype(np.float32) * (1.0 / 255.0) - mean) / std
    return out.transpose(2, 0, 1)


def get_mini_boxes(contour: np.ndarray) -> tuple[np.ndarray, float]:
    """Minimum-area rectangle, corners ordered top-left, top-right, bottom-right, bottom-left."""
    rect = cv2.minAreaRect(contour)
    pts = sorted(list(cv2.boxPoints(rect)), key=lambda p: p[0])
    i1, i4 = (0, 1) if pts[1][1] > pts[0][1] else (1, 0)
    i2, i3 = (2, 3) if pts[3][1] > pts[2][1] else (3, 2)
    return np.array([pts[i1], pts[i2], pts[i3], pts[i4]]), min(rect[1])


def _mean_inside(prob: np.ndarray, pts: np.ndarray, xmin: int, xmax: int, ymin: int, ymax: int) -> float:
    mask = np.zeros((ymax - ymin + 1, xmax - xmin + 1), dtype=np.uint8)
    shifted = pts - np.array([xmin, ymin], dtype=pts.dtype)
    cv2.fillPoly(mask, shifted.reshape(1, -1, 2).astype(np.int32), 1)
    return float(cv2.mean(prob[ymin : ymax + 1, xmin : xmax + 1], mask)[0])


def box_score_fast(prob: np.ndarray, box: np.ndarray) -> float:
    """Mean probability inside the (float) box, bounds floored/ceiled as PaddleOCR does."""
    h, w = prob.shape[:2]
    box = box.copy()
    xmin = int(np.clip(np.floor(box[:, 0].min()), 0, w - 1))
    xmax = int(np.clip(np.ceil(box[:, 0].max()), 0, w - 1))
    ymin = int(np.clip(np.floor(box[:, 1].min()), 0, h - 1))
    ymax = int(np.clip(np.ceil(box[:, 1].max()), 0, h - 1))
    return _mean_inside(prob, box, xmin, xmax, ymin, ymax)


def box_score_slow(prob: np.ndarray, contour: np.ndarray) -> float:
    """Mean probability inside the contour itself (slower, exact for curved shapes)."""
    h, w = prob.shape[:2]
    c = np.reshape(contour.copy(), (-1, 2)).astype(np.float32)
    xmin = int(np.clip(np.min(c[:, 0]), 0, w - 1))
    xmax = int(np.clip(np.max(c[:, 0]), 0, w - 1))
    ymin = int(np.clip(np.min(c[:, 1]), 0, h - 1))
    ymax = int(np.clip(np.max(c[:, 1]), 0, h - 1))
    return _mean_inside(prob, c, xmin, xmax, ymin, ymax)


def unclip(box: np.ndarray, ratio: float) -> list[np.ndarray]:
    """Grow a shrunk text kernel back by distance = area * ratio / perimeter (Vatti offset)."""
    poly = Polygon(box)
    if poly.length == 0:
        return []
    distance = poly.area * ratio / poly.length
    offset = pyclipper.PyclipperOffset()
    offset.AddPath(
        [tuple(p) for p in np.asarray(box).tolist()], pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON
    )
    return [np.array(p) for p in offset.Execute(distance)]


def _to_source(box: np.ndarray, width: int, height: int, dest_w: int, dest_h: int) -> np.ndarray:
    box = np.array(box, dtype=np.float64)
    box[:, 0] = np.clip(np.round(box[:, 0] / width * dest_w), 0, dest_w)
    box[:, 1] = np.clip(np.round(box[:, 1] / height * dest_h), 0, dest_h)
    return box


def boxes_from_bitmap(
    prob: np.ndarray, bitmap: np.ndarray, dest_w: int, dest_h: int, cfg: DetConfig
) -> tuple[list[np.ndarray], list[float]]:
    """DB quadrilaterals: contour -> min-area box -> score -> unclip -> min-area box -> source scale."""
    height, width = bitmap.shape
    contours, _ = cv2.findContours((bitmap * 255).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    boxes, scores = [], []
    for contour in contours[: cfg.max_candidates]:
        points, sside = get_mini_boxes(contour)
        if sside < cfg.min_size:
            continue
        score = box_score_fast(prob, points) if cfg.score_mode == "fast" else box_score_slow(prob, contour)
        if cfg.box_thresh > score:
            continue
        expanded = unclip(points, cfg.unclip_ratio)
        if len(expanded) != 1:
            continue
        box, sside = get_mini_boxes(expanded[0].reshape(-1, 1, 2).astype(np.float32))
        if sside < cfg.min_size + 2:
            continue
        boxes.append(_to_source(box, width, height, dest_w, dest_h).astype(np.int32))
        scores.append(score)
    return boxes, scores


def polygons_from_bitmap(
    prob: np.ndarray, bitmap: np.ndarray, dest_w: int, dest_h: int, cfg: DetConfig
) -> tuple[list[np.ndarray], list[float]]:
    """DB polygons for curved text: contour simplified (0.2% of its length), unclipped as a polygon."""
    height, width = bitmap.shape
    contours, _ = cv2.findContours((bitmap * 255).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    boxes, scores = [], []
    for contour in contours[: cfg.max_candidates]:
        epsilon = 0.002 * cv2.arcLength(contour, True)
        points = cv2.approxPolyDP(contour, epsilon, True).reshape(-1, 2)
        if points.shape[0] < 4:
            continue
        score = box_score_fast(prob, points.astype(np.float32))
        if cfg.box_thresh > score:
            continue
        expanded = unclip(points, cfg.unclip_ratio)
        if len(expanded) != 1:
            continue
        box = expanded[0].reshape(-1, 2)
        _, sside = get_mini_boxes(box.reshape(-1, 1, 2).astype(np.float32))
        if sside < cfg.min_size + 2:
            continue
        boxes.append(_to_source(box, width, height, dest_w, dest_h).astype(np.int32))
        scores.append(score)
    return boxes, scores


def order_points_clockwise(pts: np.ndarray) -> np.ndarray:
    """PaddleOCR's ordering: top-left = min x+y, bottom-right = max x+y, the others by y-x."""
    rect = np.zeros((4, 2), dtype=np.float32)
    s = pts.sum(axis=1)
    rect[0] = pts[np.argmin(s)]
    rect[2] = pts[np.argmax(s)]
    rest = np.delete(pts, (np.argmin(s), np.argmax(s)), axis=0)
    diff = np.diff(np.array(rest), axis=1)
    rect[1] = rest[np.argmin(diff)]
    rect[3] = rest[np.argmax(diff)]
    return rect


def filter_boxes(boxes: list[np.ndarray], height: int, width: int, box_type: str) -> list[np.ndarray]:
    """``filter_tag_det_res``: order, clip to the image, drop boxes 3 px or thinner (quads only)."""
    out = []
    for box in boxes:
        box = np.asarray(box, dtype=np.float32)
        if box_type == "quad":
            box = order_points_clockwise(box)
        box[:, 0] = np.clip(box[:, 0], 0, width - 1).astype(np.int32)
        box[:, 1] = np.clip(box[:, 1], 0, height - 1).astype(np.int32)
        if box_type == "quad":
            if int(np.linalg.norm(box[0] - box[1])) <= 3 or int(np.linalg.norm(box[0] - box[3])) <= 3:
                continue
        out.append(box)
    return out


_BOX_BUILDERS = {"quad": boxes_from_bitmap, "poly": polygons_from_bitmap}


def db_postprocess(prob_map: np.ndarray, src_h: int, src_w: int, cfg: DetConfig) -> dict[str, Any]:
    """One image's probability map (H, W) -> {"polygons", "scores"} in source-image pixels."""
    if cfg.box_type not in _BOX_BUILDERS:
        raise OcrQuantError(f"unknown box_type '{cfg.box_type}' (quad, poly)")
    bitmap = prob_map > cfg.thresh
    if cfg.use_dilation:
        bitmap = cv2.dilate(bitmap.astype(np.uint8), np.ones((2, 2), np.uint8)).astype(bool)
    boxes, scores = _BOX_BUILDERS[cfg.box_type](prob_map, bitmap, src_w, src_h, cfg)
    kept_scores = []
    kept = []
    for box, score in zip(boxes, scores, strict=True):
        filtered = filter_boxes([box], src_h, src_w, cfg.box_type)
        if filtered:
            kept.append(filtered[0])
            kept_scores.append(score)
    return {
        "polygons": [b.astype(int).tolist() for b in kept],
        "scores": [round(float(s), 6) for s in kept_scores],
    }


@register_task("det")
class DetTask(Task):
    """DB text detection (PP-OCR det models)."""

    Config = DetConfig
    output_layout = (None, 1, None, None)
    output_layout_text = "N x 1 x H x W (a probability map)"

    def preprocess(self, images: list[np.ndarray]) -> Batch:
        arrays, metas = [], []
        mean = np.asarray(self.config.mean, dtype=np.float32)
        std = np.asarray(self.config.std, dtype=np.float32)
        for image in images:
            resized, ratio_h, ratio_w = det_resize(image, self.config)
            arrays.append(normalize_det(resized, mean, std))
            metas.append(
                {"src_h": image.shape[0], "src_w": image.shape[1], "ratio_h": ratio_h, "ratio_w": ratio_w}
            )
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise OcrQuantError("det images of different sizes cannot share a batch; use --batch-size 1")
        return Batch(np.stack(arrays).astype(np.float32), metas)

    def postprocess(self, outputs: list[np.ndarray], batch: Batch) -> list[dict[str, Any]]:
        maps = outputs[0]
        if maps.ndim != 4 or maps.shape[1] != 1:
            raise OcrQuantError(f"det model output should be N x 1 x H x W, got shape {list(maps.shape)}")
        return [
            db_postprocess(maps[i, 0], m["src_h"], m["src_w"], self.config) for i, m in enumerate(batch.metas)
        ]

    def new_metric(self) -> Metric:
        return DetMetric()

    def batchable(self) -> bool:
        return self.config.input_shape is not None


def expected_input_hw(image_hw: tuple[int, int], cfg: DetConfig) -> tuple[int, int]:
    """The network input size an image of ``image_hw`` gets (used by benches and reports)."""
    dummy = np.zeros((*image_hw, 3), dtype=np.uint8)
    resized, _, _ = det_resize(dummy, cfg)
    return resized.shape[0], resized.shape[1]


__all__ = ["DetConfig", "DetTask", "db_postprocess", "det_resize", "expected_input_hw"]
