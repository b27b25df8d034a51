"""SNR along the network depth, worst layers labelled (matplotlib's object API: no pyplot, no display)."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure

from ocrquant.analysis.compare import CompareResult
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
