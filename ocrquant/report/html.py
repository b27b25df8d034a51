"""``report.html``: the run's report as one self-contained page (inline CSS, pictures as data URIs),
so it opens offline, can be mailed as one file, and needs no server."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from ocrquant.report.figures import TaskFigures
from ocrquant.report.table import (
    CHAIN_COLUMNS,
    COLUMNS,
    ReportRow,
    chain_cells,
    machine_description,
    row_cells,
)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1180px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img.plot { max-width: 100%; border: 1px solid #ddd; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; }
.gallery figure { margin: 0; max-width: 480px; }
.gallery img { max-width: 100%; border: 1px solid #ddd; }
.gallery figcaption { font-size: 13px; }
.note { color: #555; font-size: 14px; }
"""


def _img(path: Path | None, cls: str, alt: str) -> str:
    if path is None or not Path(path).is_file():
        return f'<p class="note">({html.escape(alt)}: not drawn)</p>'
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img class="{cls}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _table(columns: list[str], rows: list[list[str]], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _task_section(row: ReportRow, figures: TaskFigures | None) -> str:
    parts = [f"<section class='task' id='task-{html.escape(row.task)}'>"]
    parts.append(f"<h2>{html.escape(row.model)} ({html.escape(row.task)})</h2><ul>")
    if row.float_nodes:
        parts.append(
            f"<li><details><summary>kept in float: {len(row.float_nodes)} nodes</summary>"
            f"{html.escape(', '.join(row.float_nodes))}</details></li>"
        )
    else:
        parts.append("<li>kept in float: none of the quantizable ops</li>")
    parts += [f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>" for k, v in row.details.items()]
    parts.append("</ul>")
    if figures is None:
        return "".join(parts) + "</section>"
    parts.append("<h3>SNR along the network (INT8 as it runs vs the float graph it was made from)</h3>")
    parts.append(_img(figures.snr_plot, "plot snr", f"SNR per layer, {row.task}"))
    if figures.worst_layers:
        parts.append("<p>Worst layers: " + "; ".join(
            f"{html.escape(name)} ({html.escape(op)}, {snr:.1f} dB)" for name, op, snr in figures.worst_layers
        ) + "</p>")  # fmt: skip
    if figures.sensitivity:
        parts.append("<h3>Sensitivity (most sensitive first)</h3>")
        ranking = [[n, _number(d, "+.2f"), _number(snr, ".1f")] for n, d, snr in figures.sensitivity]
        parts.append(_table(["layer", "metric delta (pt)", "output SNR (dB)"], ranking, "sens"))
    parts.append(
        f"<h3>Where FP32 and INT8 disagree: {figures.disagreements} of {row.test_size} test samples</h3>"
    )
    if figures.gallery:
        parts.append("<div class='gallery'>")
        for item in figures.gallery:
            parts.append(
                f"<figure>{_img(item.image, 'sample', item.key)}"
                f"<figcaption>{html.escape(item.caption)}</figcaption></figure>"
            )
        parts.append("</div>")
    return "".join(parts) + "</section>"


def render_html(
    rows: list[ReportRow],
    settings: dict[str, Any],
    chain: list[dict[str, Any]] | None = None,
    figures: dict[str, TaskFigures] | None = None,
    speed_plot: Path | None = None,
) -> str:
    """The whole page: the table, latency and size bars, then per task its plot, worst layers and the
    samples where the two models disagree, then the settings."""
    figures = figures or {}
    body = [
        "<h1>ocrquant report</h1>",
        f"<p class='note'>Machine: {html.escape(machine_description())}. Latency: median model call, "
        f"float and INT8 interleaved on the same inputs, {html.escape(str(settings.get('threads', '?')))} "
        "threads, onnxruntime thread spinning off.</p>",
        _table(COLUMNS, [row_cells(r) for r in rows], "results"),
    ]
    if chain:
        body.append("<h2>End-to-end chain (det -> cls -> rec, ICDAR2015 protocol, no lexicon)</h2>")
        body.append(_table(CHAIN_COLUMNS, [chain_cells(c) for c in chain], "chain"))
    if speed_plot is not None:
        body.append(_img(speed_plot, "plot speed", "latency and size"))
    body += [_task_section(r, figures.get(r.task)) for r in rows]
    body.append("<h2>Settings</h2><ul>")
    body += [f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>" for k, v in settings.items()]
    body.append("</ul>")
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>ocrquant report</title>"
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n"
    )
