"""The pictures of a run's report: per task, SNR along the network (float vs INT8) with the worst layers
named, and a gallery of the test samples where FP32 and INT8 disagree; across tasks, latency and size.

Each is a PNG in the run folder (``<task>/figures/``); :mod:`ocrquant.report.html` embeds them in
``report.html``. matplotlib draws the plots (Agg backend: no display), OpenCV the sample images.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from matplotlib.figure import Figure

from ocrquant.analysis.compare import compare_models
from ocrquant.analysis.graph import float_reference
from ocrquant.analysis.plot import plot_snr
from ocrquant.data import load_image
from ocrquant.errors import OcrQuantError
from ocrquant.evaluation.evaluate import preprocessed_inputs
from ocrquant.fileio import atomic_path, write_bytes_atomic

log = logging.getLogger("ocrquant")

#: samples compared layer by layer for the SNR plot (each a full float and INT8 pass per chunk)
SNR_SAMPLES = 2
#: disagreements shown per task
GALLERY_SIZE = 6
#: gallery images are scaled to this width (det scenes) so the page stays small
GALLERY_WIDTH = 480
#: word crops are scaled up to this height
CROP_HEIGHT = 64


@dataclass
class GalleryItem:
    """One test sample where FP32 and INT8 disagree: the picture and what each model said."""

    key: str
    image: Path
    caption: str


@dataclass
class TaskFigures:
    """What the report shows of one task beyond its table row."""

    task: str
    snr_plot: Path | None = None
    worst_layers: list[tuple[str, str, float]] = field(default_factory=list)  # tensor, op, SNR dB
    disagreements: int = 0  # samples where FP32 and INT8 differ (the gallery shows the first few)
    gallery: list[GalleryItem] = field(default_factory=list)
    #: the budget search's ranking when it ran: layer, metric delta (points), output SNR (dB)
    sensitivity: list[tuple[str, float | None, float | None]] = field(default_factory=list)


def task_figures(
    task: Any, float_path: Path, int8_path: Path, test_set: Any, results: tuple, out: Path, threads: int
) -> TaskFigures:
    """The report's pictures of one task, drawn into ``out/figures``: the SNR plot on the first
    :data:`SNR_SAMPLES` test inputs, the gallery from the FP32 and INT8 results' samples, and the
    budget search's ranking when its ``.mixed.json`` lies beside the INT8 model."""
    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    figures = TaskFigures(task.name)
    inputs = preprocessed_inputs(task, test_set, SNR_SAMPLES)
    figures.snr_plot, figures.worst_layers = snr_figure(float_path, int8_path, inputs, fig_dir, threads)
    figures.disagreements, figures.gallery = gallery(
        task.name, test_set, results[0].samples, results[1].samples, fig_dir
    )
    search = int8_path.with_name(int8_path.stem + ".mixed.json")
    if search.is_file():
        rows = json.loads(search.read_text(encoding="utf-8")).get("sensitivity") or []
        figures.sensitivity = [
            (str(r.get("name")), r.get("delta_points"), r.get("snr_db")) for r in rows[:10]
        ]
    return figures


def snr_figure(
    float_model: Path, int8_model: Path, inputs: list[np.ndarray], out_dir: Path, threads: int
) -> tuple[Path | None, list[tuple[str, str, float]]]:
    """SNR of every matched tensor along the depth (cumulative: the INT8 model as it runs) on a few
    test inputs, against the float graph the quantizer used; the PNG and the five worst layers."""

    try:
        with float_reference(float_model, int8_model) as reference:
            result = compare_models(
                reference, int8_model, inputs, mode="cumulative", threads=threads, progress=False
            )
    except OcrQuantError as exc:  # a graph the matcher cannot pair: the report says so, the run goes on
        log.warning("no SNR plot for %s: %s", int8_model.name, exc)
        return None, []
    path = plot_snr(result, out_dir / "snr.png")
    worst = [(r.float_name, r.op_type, round(r.snr_db, 2)) for r in result.worst(5, "cumulative")]
    return path, [w for w in worst if math.isfinite(w[2])]


#: det: the per-image figures whose change the metric sees (boxes kept, boxes matching the truth)
DET_FIGURES = ("det_care", "matched")


def differs(task: str, float_sample: dict, int8_sample: dict) -> bool:
    """Whether FP32 and INT8 differ on one sample in what the metric sees: det, the number of boxes
    kept or matched to the truth (a box a pixel off is no disagreement); rec, the text; cls, the label."""
    if task.startswith("det"):
        f, q = float_sample.get("figures") or {}, int8_sample.get("figures") or {}
        return any(f.get(k) != q.get(k) for k in DET_FIGURES)
    key = "text" if task == "rec" else "label"
    return (float_sample.get("prediction") or {}).get(key) != (int8_sample.get("prediction") or {}).get(key)


def _boxes(pred: Any) -> list[list[list[int]]]:
    return [[[round(v) for v in pt] for pt in poly] for poly in (pred or {}).get("polygons", [])]


def gallery(
    task: str, dataset: Any, float_samples: list[dict], int8_samples: list[dict], out_dir: Path
) -> tuple[int, list[GalleryItem]]:
    """The disagreeing samples (count, and the first :data:`GALLERY_SIZE` drawn): det scenes with the
    FP32 boxes in green and the INT8 boxes in red; rec and cls crops with both readings and the truth."""

    by_key = {s.key: s for s in dataset.samples}
    int8_by_key = {s["key"]: s for s in int8_samples}
    pairs = [
        (f, int8_by_key[f["key"]])
        for f in float_samples
        if f["key"] in int8_by_key and differs(task, f, int8_by_key[f["key"]])
    ]
    items = []
    for f, q in pairs[:GALLERY_SIZE]:
        sample = by_key.get(f["key"])
        if sample is None:
            continue
        image = load_image(sample)
        if task.startswith("det"):
            image = _draw_boxes(image, _boxes(f.get("prediction")), (60, 170, 60))
            image = _draw_boxes(image, _boxes(q.get("prediction")), (40, 40, 220))
            ff, qf = f.get("figures") or {}, q.get("figures") or {}
            caption = (
                f"{sample.key}: FP32 (green) {ff.get('det_care', '?')} boxes, {ff.get('matched', '?')} "
                f"match the truth; INT8 (red) {qf.get('det_care', '?')}, {qf.get('matched', '?')}"
            )
        else:
            key = "text" if task == "rec" else "label"
            truth = sample.target if task == "rec" else ("0" if sample.target == 0 else "180")
            caption = (
                f"{sample.key}: truth '{truth}', FP32 '{f['prediction'].get(key)}', "
                f"INT8 '{q['prediction'].get(key)}'"
            )
        if image.shape[1] > GALLERY_WIDTH:  # scenes: down to the page's width
            scale = GALLERY_WIDTH / image.shape[1]
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        elif image.shape[0] < CROP_HEIGHT:  # word crops: up to a readable height
            scale = min(CROP_HEIGHT / image.shape[0], GALLERY_WIDTH / image.shape[1])
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        path = out_dir / f"differs_{len(items)}.png"
        write_bytes_atomic(path, cv2.imencode(".png", image)[1].tobytes())
        items.append(GalleryItem(sample.key, path, caption))
    return len(pairs), items


def _draw_boxes(image: np.ndarray, boxes: list[list[list[int]]], color: tuple[int, int, int]) -> np.ndarray:
    out = image.copy()
    thickness = max(2, image.shape[1] // 400)
    for box in boxes:
        cv2.polylines(out, [np.asarray(box, dtype=np.int32)], True, color, thickness)
    return out


def speed_size_figure(rows: list[Any], path: Path) -> Path | None:
    """Bars per model: median latency FP32 vs INT8, and file size, from the report rows."""
    if not rows:
        return None
    names = [f"{r.model}\n({r.task})" for r in rows]
    x = np.arange(len(rows))
    fig = Figure(figsize=(11, 3.6), dpi=100)
    ax1, ax2 = fig.subplots(1, 2)
    for ax, (a, b), unit in (
        (ax1, ([r.float_ms for r in rows], [r.int8_ms for r in rows]), "ms per model call (median)"),
        (ax2, ([r.float_mb for r in rows], [r.int8_mb for r in rows]), "model file (MB)"),
    ):
        ax.bar(x - 0.2, a, 0.4, label="FP32", color="tab:blue")
        ax.bar(x + 0.2, b, 0.4, label="INT8", color="tab:orange")
        ax.set_xticks(x, names, fontsize=8)
        ax.set_ylabel(unit)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
