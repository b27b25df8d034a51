"""Text detection with CRAFT (character region + affinity maps), as CRAFT's own ``test.py`` runs it.

A variant of ``det``: same prediction format (``{"polygons", "scores"}`` in source-image pixels) and
the same :class:`DetMetric`, so evaluation, quantization and reports treat it like any detector. Only
the model's input/output semantics differ, and they must match the reference exactly for the
published weights to score as published:

* Preprocess (``imgproc.resize_aspect_ratio`` + ``normalizeMeanVariance``): BGR -> RGB; long side
  scaled to ``mag_ratio * max(h, w)`` capped at ``canvas_size`` (aspect kept, bilinear); the image is
  pasted at the top-left of a zero canvas padded up to multiples of 32; then ``(x - 255*mean) /
  (255*std)`` with ImageNet statistics (so the padding becomes ``-mean/std``, as in the reference).
* Postprocess (``craft_utils.getDetBoxes``): threshold region at ``low_text`` and affinity at
  ``link_threshold``, 4-connected components of their union; drop components smaller than
  ``min_area`` pixels or whose peak region score is below ``text_threshold``; remove the pure-link
  pixels, dilate by a size-dependent square kernel, take the min-area rectangle (an axis-aligned box
  for near-square ones), start at the top-left corner; scale by 2 (maps are half resolution) and by
  the resize ratio back to the source image.

``box_type="poly"`` returns the outline of each dilated component (simplified) instead of its
rectangle, for curved text. This is our own, simpler polygon than CRAFT's ``getPoly_core``
(which walks the character centre line); it is a valid, simple polygon that the IoU protocol scores.
A component's score is its peak region score (CRAFT itself reports none; the maps are not passed
through a sigmoid, so a score can slightly exceed 1). Unlike the reference, points are clipped to the
source image, as the ``det`` task does, so crops taken from them stay inside the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from shapely.geometry import Polygon

from ocrquant.errors import OcrQuantError
from ocrquant.metrics.det_iou import DetMetric
from ocrquant.tasks.base import Batch, Metric, Task, register_task

IMAGENET_MEAN_255 = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255.0
IMAGENET_STD_255 = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255.0

_INTERPOLATIONS = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA}


@dataclass
class CraftConfig:
    """CRAFT ``test.py`` settings (its defaults) plus the output shape."""

    canvas_size: int = 1280
    mag_ratio: float = 1.5
    interpolation: str = "linear"  # "linear" (reference) | "cubic" | "area"
    text_threshold: float = 0.7
    link_threshold: float = 0.4
    low_text: float = 0.4
    min_area: int = 10  # components of fewer map pixels are noise
    box_type: str = "quad"  # "quad" (min-area rectangle) | "poly" (component outline)
    poly_epsilon: float = 0.01  # "poly": outline simplification, as a fraction of its perimeter
    #: a fixed model input (H, W), multiples of 32 (``--input-shape``, a static-shape deployment): the
    #: image is scaled to fit it, aspect kept, and padded, instead of the canvas/mag_ratio rule
    input_shape: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.input_shape is not None:
            h, w = (int(v) for v in self.input_shape)
            if h <= 0 or w <= 0 or h % 32 or w % 32:
                raise OcrQuantError(f"CRAFT input shape must be positive multiples of 32, got {h}x{w}")
            self.input_shape = (h, w)


def craft_resize(image: np.ndarray, cfg: CraftConfig) -> tuple[np.ndarray, float]:
    """``resize_aspect_ratio``: scaled image on a zero canvas padded to multiples of 32, and the ratio."""
    if cfg.interpolation not in _INTERPOLATIONS:
        raise OcrQuantError(f"unknown interpolation '{cfg.interpolation}' ({', '.join(_INTERPOLATIONS)})")
    h, w = image.shape[:2]
    if cfg.input_shape is not None:
        ratio = min(cfg.input_shape[0] / h, cfg.input_shape[1] / w)
    else:
        ratio = min(cfg.mag_ratio * max(h, w), float(cfg.canvas_size)) / max(h, w)
    th, tw = max(int(h * ratio), 1), max(int(w * ratio), 1)
    scaled = cv2.resize(image, (tw, th), interpolation=_INTERPOLATIONS[cfg.interpolation])
    size = cfg.input_shape or (th + (-th) % 32, tw + (-tw) % 32)
    canvas = np.zeros((*size, image.shape[2]), dtype=np.float32)
    canvas[:th, :tw] = scaled
    return canvas, ratio


def normalize_craft(rgb: np.ndarray) -> np.ndarray:
    """``normalizeMeanVariance`` on an RGB float image (0..255), then HWC -> CHW."""
    return ((rgb - IMAGENET_MEAN_255) / IMAGENET_STD_255).transpose(2, 0, 1)


def _component_points(segmap: np.ndarray, ox: int, oy: int) -> np.ndarray:
    """(x, y) of the non-zero pixels of a cropped segmentation map, in full-map coordinates."""
    ys, xs = np.nonzero(segmap)
    return np.stack([xs + ox, ys + oy], axis=1).astype(np.int32)


def _rect_box(points: np.ndarray) -> np.ndarray:
    """Min-area rectangle of ``points``; an axis-aligned box when it is nearly square (CRAFT aligns
    such "diamonds" because a square's min-area angle is arbitrary); clockwise from the top-left."""
    box = cv2.boxPoints(cv2.minAreaRect(points))
    side_a, side_b = np.linalg.norm(box[0] - box[1]), np.linalg.norm(box[1] - box[2])
    if abs(1 - max(side_a, side_b) / (min(side_a, side_b) + 1e-5)) <= 0.1:
        left, right = points[:, 0].min(), points[:, 0].max()
        top, bottom = points[:, 1].min(), points[:, 1].max()
        box = np.array([[left, top], [right, top], [right, bottom], [left, bottom]], dtype=np.float32)
    return np.roll(box, 4 - int(box.sum(axis=1).argmin()), axis=0)


def _outline(segmap: np.ndarray, ox: int, oy: int, epsilon: float) -> np.ndarray | None:
    """Simplified outer contour of the largest blob of a cropped map, or None when not a valid polygon."""
    contours, _ = cv2.findContours(segmap, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    contour = max(contours, key=cv2.contourArea)
    approx = cv2.approxPolyDP(contour, epsilon * cv2.arcLength(contour, True), True).reshape(-1, 2)
    if approx.shape[0] < 4:
        return None
    pts = (approx + np.array([ox, oy])).astype(np.float32)
    poly = Polygon(pts)
    return pts if poly.is_valid and poly.is_simple and poly.area > 0 else None


def craft_boxes(
    region: np.ndarray, affinity: np.ndarray, cfg: CraftConfig
) -> tuple[list[np.ndarray], list[float]]:
    """``getDetBoxes`` on one image's maps: boxes (or outlines) in map coordinates and their scores.

    Works on each component's bounding window instead of a full-size copy of the map per component
    (the reference's cost is components x map size); the result is the same because a component and
    its dilation never leave that window.
    """
    if cfg.box_type not in ("quad", "poly"):
        raise OcrQuantError(f"unknown box_type '{cfg.box_type}' (quad, poly)")
    map_h, map_w = region.shape
    text = region > cfg.low_text
    link = affinity > cfg.link_threshold
    count, labels, stats, _ = cv2.connectedComponentsWithStats((text | link).astype(np.uint8), connectivity=4)
    link_only = link & ~text
    boxes, scores = [], []
    for k in range(1, count):
        x, y, w, h, size = (int(v) for v in stats[k])
        if size < cfg.min_area:
            continue
        window = (slice(y, y + h), slice(x, x + w))
        mask = labels[window] == k
        peak = float(region[window][mask].max())
        if peak < cfg.text_threshold:
            continue
        niter = int(math.sqrt(size * min(w, h) / (w * h)) * 2)
        sx, sy = max(x - niter, 0), max(y - niter, 0)
        ex, ey = min(x + w + niter + 1, map_w), min(y + h + niter + 1, map_h)
        segmap = np.zeros((ey - sy, ex - sx), dtype=np.uint8)
        inner = segmap[y - sy : y - sy + h, x - sx : x - sx + w]
        inner[mask & ~link_only[window]] = 255
        segmap = cv2.dilate(segmap, cv2.getStructuringElement(cv2.MORPH_RECT, (1 + niter, 1 + niter)))
        points = _component_points(segmap, sx, sy)
        if len(points) == 0:
            continue
        box = _outline(segmap, sx, sy, cfg.poly_epsilon) if cfg.box_type == "poly" else None
        boxes.append(box if box is not None else _rect_box(points))
        scores.append(peak)
    return boxes, scores


def craft_postprocess(
    maps: np.ndarray, src_h: int, src_w: int, ratio: float, cfg: CraftConfig
) -> dict[str, Any]:
    """One image's ``[H/2, W/2, 2]`` maps -> {"polygons", "scores"} in source-image pixels."""
    boxes, scores = craft_boxes(maps[..., 0], maps[..., 1], cfg)
    scale = 2.0 / ratio  # half-resolution maps, then undo the resize
    polygons = []
    for box in boxes:
        pts = np.asarray(box, dtype=np.float64) * scale
        pts[:, 0] = np.clip(pts[:, 0], 0, src_w - 1)
        pts[:, 1] = np.clip(pts[:, 1], 0, src_h - 1)
        polygons.append(np.round(pts).astype(int).tolist())
    return {"polygons": polygons, "scores": [round(s, 6) for s in scores]}


@register_task("det-craft")
class CraftTask(Task):
    """CRAFT text detection (character region + affinity score maps)."""

    Config = CraftConfig
    output_layout = (None, None, None, 2)
    output_layout_text = "N x H x W x 2 (region, affinity)"

    def preprocess(self, images: list[np.ndarray]) -> Batch:
        arrays, metas = [], []
        for image in images:
            canvas, ratio = craft_resize(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), self.config)
            arrays.append(normalize_craft(canvas))
            metas.append({"src_h": image.shape[0], "src_w": image.shape[1], "ratio": ratio})
        if len({a.shape for a in arrays}) != 1:
            raise OcrQuantError(
                "det-craft images of different sizes cannot share a batch: use --batch-size 1"
            )
        return Batch(np.stack(arrays).astype(np.float32), metas)

    def postprocess(self, outputs: list[np.ndarray], batch: Batch) -> list[dict[str, Any]]:
        maps = outputs[0]
        if maps.ndim != 4 or maps.shape[-1] != 2:
            shape = list(maps.shape)
            raise OcrQuantError(f"CRAFT output should be N x H x W x 2 (region, affinity), got {shape}")
        return [
            craft_postprocess(maps[i], m["src_h"], m["src_w"], m["ratio"], self.config)
            for i, m in enumerate(batch.metas)
        ]

    def new_metric(self) -> Metric:
        return DetMetric()

    def batchable(self) -> bool:
        return False


__all__ = ["CraftConfig", "CraftTask", "craft_boxes", "craft_postprocess", "craft_resize", "normalize_craft"]
