"""Box geometry between detection and recognition: reading order and upright crops.

Both functions reproduce PaddleOCR's ``TextSystem`` behaviour (``sorted_boxes`` and
``get_rotate_crop_image`` / ``get_minarea_rect_crop`` in tools/infer/predict_system.py and
ppocr/utils/utility.py), written afresh: the recogniser was trained and published on crops cut this
way, so a different crop rule would change the end-to-end figures, not just the code.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from ocrquant.errors import OcrQuantError
from ocrquant.tasks.det import get_mini_boxes

PointsLike = Sequence[Sequence[float]] | np.ndarray


def sorted_boxes(boxes: Sequence[PointsLike], line_tol: float = 10.0) -> list[int]:
    """Reading order of ``boxes`` (each a polygon whose first point is its top-left corner).

    Returns indices, so callers can reorder boxes and anything attached to them. The rule is
    PaddleOCR's: sort by (top-left y, top-left x), then one insertion pass that moves a box before its
    predecessor when their top-left y differ by less than ``line_tol`` pixels (the same text line)
    and it lies further left. Like PaddleOCR's, the pass stops at the first pair that is not
    swapped, so the result is "top-to-bottom, then left-to-right within a line" for ordinary
    layouts, not a full line clustering.
    """
    firsts = [(float(np.asarray(b)[0][1]), float(np.asarray(b)[0][0])) for b in boxes]
    order = sorted(range(len(boxes)), key=lambda i: firsts[i])
    for i in range(len(order) - 1):
        j = i
        while j >= 0:
            a, b = order[j], order[j + 1]
            if abs(firsts[b][0] - firsts[a][0]) < line_tol and firsts[b][1] < firsts[a][1]:
                order[j], order[j + 1] = b, a
                j -= 1
            else:
                break
    return order


def get_rotate_crop_image(image: np.ndarray, points: PointsLike, rotate_ratio: float = 1.5) -> np.ndarray:
    """Cut the quadrilateral ``points`` (top-left, top-right, bottom-right, bottom-left) out of
    ``image`` as an axis-aligned crop.

    Width is the longer of the top and bottom edges, height the longer of the left and right edges
    (both truncated to int, as PaddleOCR does); the quad is mapped onto that rectangle by a
    perspective warp with cubic interpolation and replicated borders. A crop at least
    ``rotate_ratio`` times taller than wide is assumed to be vertical text and turned 90 degrees
    counter-clockwise (``np.rot90``), since the recogniser reads horizontal lines only.
    """
    pts = np.asarray(points, dtype=np.float32)
    if pts.shape != (4, 2):
        raise OcrQuantError(f"a crop needs a 4-point box, got an array of shape {list(pts.shape)}")
    width = int(max(np.linalg.norm(pts[0] - pts[1]), np.linalg.norm(pts[2] - pts[3])))
    height = int(max(np.linalg.norm(pts[0] - pts[3]), np.linalg.norm(pts[1] - pts[2])))
    width, height = max(width, 1), max(height, 1)
    target = np.float32([[0, 0], [width, 0], [width, height], [0, height]])
    matrix = cv2.getPerspectiveTransform(pts, target)
    crop = cv2.warpPerspective(
        image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC
    )
    if crop.shape[0] / float(crop.shape[1]) >= rotate_ratio:
        crop = np.ascontiguousarray(np.rot90(crop))
    return crop


def crop_text_region(image: np.ndarray, polygon: PointsLike, rotate_ratio: float = 1.5) -> np.ndarray:
    """Crop a detected region: quads directly, other polygons (``box_type='poly'``) through their
    minimum-area rectangle, as PaddleOCR's pipeline does."""
    pts = np.asarray(polygon, dtype=np.float32)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
        raise OcrQuantError(f"a text region needs at least 3 points, got an array of shape {list(pts.shape)}")
    quad = pts if len(pts) == 4 else get_mini_boxes(pts.astype(np.int32))[0].astype(np.float32)
    return get_rotate_crop_image(image, quad, rotate_ratio)
