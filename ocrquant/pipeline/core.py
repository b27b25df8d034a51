"""The OCR pipeline: detect -> crop -> (direction classify) -> recognise, as PaddleOCR's ``TextSystem``.

Each stage is a :class:`~ocrquant.tasks.base.Task` (the exact pre/postprocessing the model family was
published with) plus a :class:`~ocrquant.runtime.base.Runner`, so an FP32 and an INT8 model of the
same stage are interchangeable and a chain of mixed precisions is just another set of runners.

What PaddleOCR's ``TextSystem.__call__`` does, and this reproduces: boxes from the detector are put in
reading order (:func:`~ocrquant.pipeline.geometry.sorted_boxes`), cut out with a perspective warp
(:func:`~ocrquant.pipeline.geometry.crop_text_region`), classified in batches of 6 and turned 180
degrees where the classifier says ``180`` with a score above 0.9, recognised in batches of 6 crops
sorted by aspect ratio (the recogniser pads a batch to its widest crop, so batching is part of the
result), and lines whose recognition score is below ``drop_score`` (0.5) are dropped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ocrquant.errors import OcrQuantError
from ocrquant.pipeline.geometry import crop_text_region, sorted_boxes
from ocrquant.runtime.base import Runner
from ocrquant.tasks.base import Task

STAGES = ("det", "cls", "rec")


@dataclass
class PipelineConfig:
    """Settings of the chain itself (each model's own settings live in its task's config).

    Defaults are PaddleOCR's inference defaults (``--drop_score 0.5 --cls_thresh 0.9
    --cls_batch_num 6 --rec_batch_num 6``).
    """

    drop_score: float = 0.5
    cls_thresh: float | None = None  # None: the cls task's own ``thresh`` (0.9)
    cls_batch_size: int = 6
    rec_batch_size: int = 6
    line_tol: float = 10.0  # px: top-left y closer than this counts as one text line (reading order)
    rotate_ratio: float = 1.5  # crops this much taller than wide are turned 90 degrees (vertical text)

    def __post_init__(self) -> None:
        if self.cls_batch_size < 1 or self.rec_batch_size < 1:
            raise OcrQuantError("pipeline batch sizes must be >= 1")
        if self.cls_thresh is not None and not 0.0 <= self.cls_thresh <= 1.0:
            raise OcrQuantError(f"cls threshold must lie in [0, 1], got {self.cls_thresh}")


@dataclass
class OcrLine:
    """One recognised text region: polygon in image pixels, text, recognition score, and what the
    direction classifier said (None when the pipeline has no classifier)."""

    polygon: list[list[float]]
    text: str
    score: float
    cls_label: str | None = None
    cls_score: float | None = None
    det_score: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class OcrResult:
    """The lines of one image plus per-stage wall time (ms) and how many lines ``drop_score`` removed."""

    lines: list[OcrLine]
    timing_ms: dict[str, float]
    dropped: int = 0

    def to_prediction(self) -> dict[str, Any]:
        """The form :class:`~ocrquant.metrics.e2e.E2EMetric` scores."""
        return {
            "polygons": [line.polygon for line in self.lines],
            "texts": [line.text for line in self.lines],
            "scores": [line.score for line in self.lines],
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "lines": [line.to_json() for line in self.lines],
            "timing_ms": self.timing_ms,
            "dropped": self.dropped,
        }


@dataclass
class StageModel:
    """A loaded model for one stage: its task (pre/postprocessing), runner and where it came from."""

    stage: str
    name: str
    path: Path
    precision: str
    task: Task
    runner: Runner
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def size_mb(self) -> float:
        """On-disk size of the model (plus an external-data file beside it, if any)."""
        size = self.path.stat().st_size
        data = self.path.with_suffix(self.path.suffix + ".data")
        if data.is_file():
            size += data.stat().st_size
        return size / 1e6

    def describe(self) -> dict[str, Any]:
        """JSON-ready identity and settings (round-tripped through JSON, so a resumed run's header
        compares equal to the one on disk)."""
        config = json.loads(json.dumps(asdict(self.task.config), default=str))
        return {
            "name": self.name, "path": str(self.path), "precision": self.precision,
            "size_mb": round(self.size_mb, 3), "task_config": config,
        }  # fmt: skip


def run_task(
    task: Task, runner: Runner, images: Sequence[np.ndarray], batch_size: int
) -> list[dict[str, Any]]:
    """Run ``task`` over ``images`` in batches formed after sorting by the task's key (aspect ratio for
    cls and rec, as PaddleOCR's predict_cls / predict_rec do); predictions come back in input order."""
    order = sorted(range(len(images)), key=lambda i: task.sort_key(images[i]))
    out: list[dict[str, Any] | None] = [None] * len(images)
    input_name = runner.input_names[0]
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = task.preprocess([images[i] for i in idx])
        preds = task.postprocess(runner.run({input_name: batch.inputs}), batch)
        for i, pred in zip(idx, preds, strict=True):
            out[i] = pred
    return out  # type: ignore[return-value]


class OcrPipeline:
    """Detection, optional direction classification and recognition over one image at a time.

    ``pipeline(image)`` returns the :class:`OcrLine` list (``pipeline.last_timing`` holds that call's
    per-stage ms); ``pipeline.run(image)`` returns both as an :class:`OcrResult`.
    """

    def __init__(
        self,
        det_runner: Runner,
        cls_runner: Runner | None,
        rec_runner: Runner,
        det_task: Task,
        cls_task: Task | None,
        rec_task: Task,
        config: PipelineConfig | None = None,
        stages: dict[str, StageModel] | None = None,
    ) -> None:
        for name, task, expected in (("det", det_task, "det"), ("rec", rec_task, "rec")):
            if task.name != expected:
                raise OcrQuantError(f"the {name} stage needs a {expected} task, got {task.name}")
        if cls_runner is not None and (cls_task is None or cls_task.name != "cls"):
            raise OcrQuantError("a cls runner needs a cls task")
        self.det_runner, self.cls_runner, self.rec_runner = det_runner, cls_runner, rec_runner
        self.det_task, self.cls_task, self.rec_task = det_task, cls_task, rec_task
        self.config = config or PipelineConfig()
        self.stages = stages or {}
        self.last_timing: dict[str, float] = {}

    @classmethod
    def from_stages(
        cls,
        det: StageModel,
        cls_stage: StageModel | None,
        rec: StageModel,
        config: PipelineConfig | None = None,
    ) -> OcrPipeline:
        stages = {"det": det} | ({"cls": cls_stage} if cls_stage else {}) | {"rec": rec}
        return cls(
            det.runner, cls_stage.runner if cls_stage else None, rec.runner,
            det.task, cls_stage.task if cls_stage else None, rec.task, config, stages,
        )  # fmt: skip

    @property
    def cls_thresh(self) -> float:
        if self.config.cls_thresh is not None:
            return self.config.cls_thresh
        return float(getattr(self.cls_task.config, "thresh", 0.9)) if self.cls_task else 0.9

    def __call__(self, image: np.ndarray) -> list[OcrLine]:
        result = self.run(image)
        return result.lines

    def run(self, image: np.ndarray) -> OcrResult:
        """OCR one BGR uint8 image (PaddleOCR's colour convention)."""
        if (
            not isinstance(image, np.ndarray)
            or image.ndim != 3
            or image.shape[2] != 3
            or image.dtype != np.uint8
        ):
            raise OcrQuantError("the OCR pipeline takes a BGR uint8 image of shape H x W x 3")
        timing = {"det": 0.0, "crop": 0.0, "cls": 0.0, "rec": 0.0}
        t_start = t0 = time.perf_counter()
        det = run_task(self.det_task, self.det_runner, [image], 1)[0]
        t1 = time.perf_counter()
        timing["det"] = 1000 * (t1 - t0)

        polygons = det["polygons"]
        det_scores = det.get("scores") or [None] * len(polygons)
        order = sorted_boxes(polygons, self.config.line_tol) if polygons else []
        polygons = [polygons[i] for i in order]
        det_scores = [det_scores[i] for i in order]
        crops = [crop_text_region(image, p, self.config.rotate_ratio) for p in polygons]
        t2 = time.perf_counter()
        timing["crop"] = 1000 * (t2 - t1)

        cls_preds: list[dict[str, Any] | None] = [None] * len(crops)
        if self.cls_runner is not None and self.cls_task is not None and crops:
            cls_preds = run_task(self.cls_task, self.cls_runner, crops, self.config.cls_batch_size)
            thresh = self.cls_thresh
            for i, pred in enumerate(cls_preds):
                if "180" in str(pred["label"]) and pred["score"] > thresh:
                    crops[i] = cv2.rotate(crops[i], cv2.ROTATE_180)
        t3 = time.perf_counter()
        timing["cls"] = 1000 * (t3 - t2)

        rec_preds = (
            run_task(self.rec_task, self.rec_runner, crops, self.config.rec_batch_size) if crops else []
        )
        t4 = time.perf_counter()
        timing["rec"] = 1000 * (t4 - t3)
        timing["total"] = 1000 * (t4 - t_start)

        lines, dropped = [], 0
        for poly, det_score, cls_pred, rec_pred in zip(
            polygons, det_scores, cls_preds, rec_preds, strict=True
        ):
            if rec_pred["score"] < self.config.drop_score:
                dropped += 1
                continue
            lines.append(
                OcrLine(
                    polygon=[[float(x), float(y)] for x, y in poly],
                    text=rec_pred["text"],
                    score=float(rec_pred["score"]),
                    cls_label=None if cls_pred is None else str(cls_pred["label"]),
                    cls_score=None if cls_pred is None else float(cls_pred["score"]),
                    det_score=None if det_score is None else float(det_score),
                )
            )
        timing = {k: round(v, 3) for k, v in timing.items()}
        self.last_timing = timing
        return OcrResult(lines, timing, dropped)

    def describe(self) -> dict[str, Any]:
        """Models and settings, for result files."""
        return {
            "models": {name: stage.describe() for name, stage in self.stages.items()},
            "config": asdict(self.config),
            "cls_thresh": self.cls_thresh if self.cls_runner is not None else None,
        }

    @property
    def size_mb(self) -> float:
        return sum(stage.size_mb for stage in self.stages.values())
