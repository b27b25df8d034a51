"""The one table users want: float vs INT8 per model, with test size, latency and model size.

Rows are plain dicts so the same data lands in report.json, report.md and the terminal.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from typing import Any

import onnxruntime

from ocrquant.evaluation.significance import paired_delta_interval


@dataclass
class ReportRow:
    """One model's float-vs-INT8 figures. ``framework_metric`` is filled when the source framework ran."""

    model: str
    task: str
    metric: str
    float_metric: float
    int8_metric: float
    test_size: int
    float_ms: float
    int8_ms: float
    float_mb: float
    int8_mb: float
    framework_metric: float | None = None
    framework: str = "onnx"
    float_nodes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    # paired bootstrap interval of the delta over the test samples (ocrquant.evaluation.significance)
    delta_interval: dict[str, float] | None = None

    @property
    def delta(self) -> float:
        return self.int8_metric - self.float_metric

    @property
    def speedup(self) -> float:
        return self.float_ms / self.int8_ms if self.int8_ms else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "delta": round(self.delta, 6), "speedup": round(self.speedup, 3)}

    @classmethod
    def from_evals(
        cls,
        model: str,
        task: str,
        float_res: Any,
        int8_res: Any,
        latency_ms: tuple[float, float],
        size_mb: tuple[float, float],
        details: dict[str, Any],
        task_obj: Any = None,
        **extra: Any,
    ) -> ReportRow:
        """A row from the float and INT8 :class:`~ocrquant.evaluation.EvalResult` of one model, with both
        metric dicts (rounded) put first in ``details``; every runtime's report builds its row here.
        With the task object (and per-sample results) the delta gets its bootstrap interval."""

        interval = None
        if task_obj is not None:
            interval = paired_delta_interval(task_obj.new_metric(), float_res.samples, int8_res.samples)
        return cls(
            model=model,
            task=task,
            metric=float_res.settings["primary_metric"],
            float_metric=float_res.primary,
            int8_metric=int8_res.primary,
            test_size=float_res.count,
            float_ms=latency_ms[0],
            int8_ms=latency_ms[1],
            float_mb=round(size_mb[0], 3),
            int8_mb=round(size_mb[1], 3),
            details={
                "float metrics": _rounded(float_res.metrics),
                "int8 metrics": _rounded(int8_res.metrics),
                **details,
            },
            delta_interval=interval,
            **extra,
        )


def _rounded(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()}


COLUMNS = [
    "model",
    "framework float",
    "float metric",
    "int8 metric",
    "delta (95% CI)",
    "test size",
    "float ms/img",
    "int8 ms/img",
    "speed-up",
    "float MB",
    "int8 MB",
]


def row_cells(row: ReportRow) -> list[str]:
    fw = f"{row.framework_metric:.4f}" if row.framework_metric is not None else "-"
    return [
        f"{row.model} ({row.task}, {row.metric})",
        fw,
        f"{row.float_metric:.4f}",
        f"{row.int8_metric:.4f}",
        _delta_cell(row),
        str(row.test_size),
        f"{row.float_ms:.2f}",
        f"{row.int8_ms:.2f}",
        f"{row.speedup:.2f}x",
        f"{row.float_mb:.2f}",
        f"{row.int8_mb:.2f}",
    ]


def _delta_cell(row: ReportRow) -> str:
    cell = f"{100 * row.delta:+.2f} pt"
    if row.delta_interval:
        cell += f" ({100 * row.delta_interval['low']:+.2f} to {100 * row.delta_interval['high']:+.2f})"
    return cell


def machine_description() -> str:

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {os.cpu_count()} cores, {int8_isa()}, {system}, onnxruntime {onnxruntime.__version__}"


ISA_FLAGS = {"avx2": "AVX2", "avx512f": "AVX512", "avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI",
             "amx_int8": "AMX-INT8"}  # fmt: skip


def int8_isa(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The x86 instruction sets that decide INT8 speed (VNNI and AMX give onnxruntime's int8 kernels
    a dot product; AVX2 alone does not), e.g. ``"AVX2 AVX512 AVX512-VNNI"``; "unknown" off Linux."""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return "unknown"
    found = [name for flag, name in ISA_FLAGS.items() if flag in flags]
    return " ".join(found) if found else "no AVX2"


CHAIN_COLUMNS = [
    "chain",
    "det",
    "cls",
    "rec",
    "e2e precision",
    "e2e recall",
    "e2e hmean",
    "ms/img (mean)",
    "ms/img (p50)",
    "models MB",
    "images",
]


def chain_cells(row: dict[str, Any]) -> list[str]:
    """One end-to-end chain row (see ``ocrquant.pipeline.evaluate.chain_report``) as table cells."""
    prec = row.get("precisions", {})
    return [
        row["row"],
        prec.get("det", "-"),
        prec.get("cls", "-"),
        prec.get("rec", "-"),
        f"{row['precision']:.4f}",
        f"{row['recall']:.4f}",
        f"{row['hmean']:.4f}",
        f"{row['latency_ms_mean']:.1f}",
        f"{row['latency_ms_p50']:.1f}",
        f"{row['size_mb']:.2f}",
        str(row["images"]),
    ]


def render_markdown(
    rows: list[ReportRow], settings: dict[str, Any], chain: list[dict[str, Any]] | None = None
) -> str:
    lines = ["# ocrquant report", "", f"Machine: {machine_description()}", ""]
    if rows:
        lines.append("| " + " | ".join(COLUMNS) + " |")
        lines.append("|" + "---|" * len(COLUMNS))
    for row in rows:
        lines.append("| " + " | ".join(row_cells(row)) + " |")
    if chain:
        lines += [
            "",
            "## End-to-end chain (det -> cls -> rec, ICDAR2015 end-to-end protocol, no lexicon)",
            "",
        ]
        lines.append("| " + " | ".join(CHAIN_COLUMNS) + " |")
        lines.append("|" + "---|" * len(CHAIN_COLUMNS))
        for crow in chain:
            lines.append("| " + " | ".join(chain_cells(crow)) + " |")
    lines += [
        "",
        "Latency: median model call, float and INT8 interleaved on the same inputs, "
        f"{settings.get('threads', '?')} threads, onnxruntime thread spinning off.",
        "",
    ]
    for row in rows:
        lines.append(f"## {row.model} ({row.task})")
        lines.append("")
        if row.float_nodes:
            lines.append(f"Kept in float ({len(row.float_nodes)}): " + ", ".join(row.float_nodes))
        else:
            lines.append("Kept in float: none of the quantizable ops")
        for key, value in row.details.items():
            lines.append(f"- {key}: {value}")
        lines.append("")
    lines.append("## Settings")
    lines.append("")
    for key, value in settings.items():
        lines.append(f"- {key}: {value}")
    return "\n".join(lines) + "\n"
