"""``ocrquant bench``: latency/throughput/size/memory of models x backends, interleaved in one run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ocrquant.analysis.bench import run_bench
from ocrquant.cli.common import check_threads, console, guard_outputs
from ocrquant.fileio import write_json_atomic


def bench_cmd(
    model: Annotated[list[str], typer.Option("--model", "-m", help="Zoo name or .onnx path (repeatable).")],
    task: Annotated[str, typer.Option("--task", help="det, cls or rec: picks the input sizes.")],
    backend: Annotated[
        list[str] | None, typer.Option("--backend", help="onnxruntime, openvino, ... (repeatable).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", "-d", help="Images for the inputs (default: embedded sample).")
    ] = None,
    threads: Annotated[int, typer.Option(help="Runtime threads per session.", min=0)] = 2,
    rounds: Annotated[
        int, typer.Option(help="Timed rounds (each runs every input of every case).", min=1)
    ] = 20,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up rounds.", min=0)] = 2,
    shape: Annotated[
        list[str] | None, typer.Option("--shape", help="Only these task shapes, e.g. '544x960' (repeatable).")
    ] = None,
    memory: Annotated[bool, typer.Option(help="Measure peak RSS per session in a subprocess each.")] = True,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON here.")] = None,
) -> None:
    """Latency (median, p90, min) and throughput of every model on every backend at the task's real input
    sizes, all interleaved in one loop so the ratios hold on a busy machine; plus size on disk and peak
    RSS per backend session. The first model on the first backend is the baseline of the speed-up."""

    guard_outputs(list(model), files=[json_out], datasets=[data])
    check_threads(threads)

    result = run_bench(
        model,
        task,
        backends=backend,
        data=data,
        threads=threads,
        rounds=rounds,
        warmup=warmup,
        shapes=shape,
        memory=memory,
    )
    table = Table(
        title=f"bench {task} | {result.settings['threads']} threads | {rounds} rounds | "
        f"baseline {result.baseline}"
    )
    for col in (
        "model",
        "prec",
        "backend",
        "input",
        "median ms",
        "p90 ms",
        "min ms",
        "img/s",
        "speed-up",
        "MB on disk",
        "peak RSS MB",
        "session RSS MB",
    ):
        table.add_column(col, justify="left" if col in ("model", "prec", "backend", "input") else "right")
    for r in sorted(result.rows, key=lambda r: (r.shape, r.model, r.backend)):
        table.add_row(
            r.model,
            r.precision,
            r.backend,
            r.shape,
            f"{r.median_ms:.2f}",
            f"{r.p90_ms:.2f}",
            f"{r.min_ms:.2f}",
            f"{r.throughput_ips:.1f}",
            f"{r.speedup_vs_baseline:.2f}x",
            f"{r.size_mb:.2f}",
            "-" if r.rss_peak_mb is None else f"{r.rss_peak_mb:.0f}",
            "-" if r.rss_delta_mb is None else f"{r.rss_delta_mb:.0f}",
        )
    for u in result.unsupported:  # a pair the backend cannot load is a row with its reason
        table.add_row(u["model"], "", u["backend"], "-", f"unsupported: {u['reason']}", *[""] * 7)
    # piped output: rich would squeeze 12 columns into 80; a terminal keeps its own width
    console.print(table, width=None if console.is_terminal else max(console.width, 150))
    for label, notes in result.notes.items():
        for note in notes:
            console.print(f"note ({label}): {note}")
    if json_out:
        write_json_atomic(json_out, result.to_json())
        console.print(f"wrote {json_out}")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_cmd)
