"""SNR along the network depth, worst layers labelled (matplotlib's object API: no pyplot, no display)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ocrquant.analysis.compare import CompareResult
from ocrquant.analysis.sensitivity import SensitivityResult
from ocrquant.fileio import atomic_path

STYLE = {"cumulative": ("tab:blue", "o"), "isolated": ("tab:red", "s")}


def plot_snr(result: CompareResult, path: str | Path, label_worst: int = 6) -> Path:
    """Write a PNG: one line per mode, SNR (dB) against topological depth; the worst rows named."""
    fig = Figure(figsize=(12, 5), dpi=110)
    ax = fig.subplots()
    for mode in result.modes:
        rows = sorted(
            (r for r in result.rows if r.mode == mode and math.isfinite(r.snr_db)), key=lambda r: r.depth
        )
        if not rows:
            continue
        color, marker = STYLE.get(mode, ("tab:gray", "."))
        ax.plot(
            [r.depth for r in rows],
            [r.snr_db for r in rows],
            color=color,
            marker=marker,
            markersize=3,
            linewidth=1,
            label=mode,
        )
        for rank, r in enumerate(result.worst(label_worst, mode)):
            ax.annotate(
                f"{r.float_name} ({r.op_type})",
                (r.depth, r.snr_db),
                fontsize=7,
                color=color,
                xytext=(6, -12 - 10 * rank),
                textcoords="offset points",
                arrowprops={"arrowstyle": "-", "color": color, "alpha": 0.4, "lw": 0.5},
            )
    ax.set_xlabel("depth (topological index in the float graph)")
    ax.set_ylabel("SNR (dB), higher is better")
    ax.set_title(f"float vs INT8: {Path(result.quant_model).name} ({result.samples} inputs)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def plot_sensitivity(result: SensitivityResult, path: str | Path) -> Path:
    """PNG: metric delta per layer (bars, graph order) and output SNR (line, right axis)."""
    rows = sorted(result.rows, key=lambda r: r.depth)
    x = np.arange(len(rows))
    fig = Figure(figsize=(max(8, 0.28 * len(rows)), 5), dpi=110)
    ax = fig.subplots()
    deltas = [r.delta_points if r.delta_points is not None else 0.0 for r in rows]
    ax.bar(x, deltas, color=["tab:red" if d < 0 else "tab:blue" for d in deltas])
    ax.set_ylabel(
        f"{result.metric_name} delta (points) vs {'INT8' if result.mode == 'only-float' else 'FP32'}"
    )
    ax.set_xticks(x, [r.name for r in rows], rotation=90, fontsize=7)
    ax2 = ax.twinx()
    snr = [r.snr_db if r.snr_db is not None and math.isfinite(r.snr_db) else np.nan for r in rows]
    ax2.plot(x, snr, color="black", marker=".", lw=1)
    ax2.set_ylabel("output SNR (dB) vs FP32")
    ax.set_title(
        f"{result.task} sensitivity ({result.mode}): FP32 {100 * result.fp32_metric:.2f}, "
        f"INT8 {100 * result.int8_metric:.2f} on {result.validation.get('validation_images', '?')} "
        "validation images"
    )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
