"""``ocrquant eval``: one model (or the det -> cls -> rec chain) scored on a labelled set."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ocrquant.api import eval_model
from ocrquant.cli.common import (
    LimitOpt,
    ShapeOpt,
    StrictOpt,
    ThreadsOpt,
    console,
    guard_outputs,
    positive_number,
    unit_interval,
)
from ocrquant.data import READ_POLICY
from ocrquant.errors import OcrQuantError
from ocrquant.pipeline.evaluate import ChainSpec, E2EScoring, default_vocab_dir, eval_e2e
from ocrquant.runtime import RuntimeOptions
from ocrquant.tasks import get_task_class
from ocrquant.zoo.registry import DEFAULT_CHAIN
from ocrquant.zoo.resolve import resolve_model


def eval_cmd(
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Zoo name or .onnx path; for --task e2e: det=M cls=M rec=M."),
    ] = None,
    data: Annotated[Path | None, typer.Option("--data", "-d", help="Labelled dataset directory.")] = None,
    task: Annotated[
        str | None,
        typer.Option("--task", help="det, cls, rec (inferred for zoo models) or e2e (det+cls+rec)."),
    ] = None,
    data_format: Annotated[
        str | None, typer.Option("--format", help="Dataset format (default: detect).")
    ] = None,
    limit: LimitOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per model call.", min=1)] = 1,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="result.json (enables resume).")
    ] = None,
    threads: ThreadsOpt = 0,
    strict: StrictOpt = False,
    backend: Annotated[str, typer.Option(help="Runtime backend.")] = "onnxruntime",
    input_shape: ShapeOpt = None,
    limit_side_len: Annotated[int | None, typer.Option(help="det: resize limit (960).", min=32)] = None,
    box_thresh: Annotated[
        float | None, typer.Option(help="det: box score threshold (0.6).", parser=unit_interval)
    ] = None,
    unclip_ratio: Annotated[
        float | None, typer.Option(help="det: unclip ratio (1.5).", parser=positive_number)
    ] = None,
    score_mode: Annotated[str | None, typer.Option(help="det: fast | slow.")] = None,
    box_type: Annotated[str | None, typer.Option(help="det: quad | poly.")] = None,
    char_dict: Annotated[Path | None, typer.Option("--char-dict", help="rec: dictionary file.")] = None,
) -> None:
    """Evaluate a model on a labelled set with the task's OCR metric."""

    if data is None:
        raise OcrQuantError("--data is required")
    guard_outputs(
        [*(m.partition("=")[2] or m for m in model or []), char_dict], files=[output], datasets=[data]
    )
    READ_POLICY.strict = strict
    if task == "e2e":
        _eval_e2e(model or [], data, data_format, limit, output, threads, backend)
        return
    if not model or len(model) != 1:
        raise OcrQuantError("--model is required once (a zoo name or an .onnx path)")
    model = model[0]

    options = {
        "limit_side_len": limit_side_len,
        "box_thresh": box_thresh,
        "unclip_ratio": unclip_ratio,
        "score_mode": score_mode,
        "box_type": box_type,
        "char_dict": str(char_dict) if char_dict else None,
    }
    result = eval_model(
        model,
        data,
        task=task,
        data_format=data_format,
        batch_size=batch_size,
        limit=limit,
        output=output,
        backend=backend,
        runtime=RuntimeOptions(threads=threads),
        task_options=_task_options(task, options, model),
        input_shape=input_shape,
    )
    table = Table(title=f"{result.task} | {result.model} | {result.data}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in result.metrics.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    table.add_row("samples", str(result.count))
    table.add_row("skipped", str(len(result.skipped)))
    table.add_row("images/s", f"{result.timing['images_per_s']:.2f}")
    table.add_row("model ms/img", f"{result.timing['model_ms_per_image']:.2f}")
    table.add_row("model share of wall time", f"{result.timing['model_share']:.2%}")
    console.print(table)
    if output:
        console.print(f"wrote {output}")


def _eval_e2e(
    models: list[str],
    data: Path,
    data_format: str | None,
    limit: int | None,
    output: Path | None,
    threads: int,
    backend: str,
) -> None:
    """``eval --task e2e``: the det -> cls -> rec chain scored with the ICDAR2015 end-to-end protocol."""

    specs: dict[str, str] = {}
    for value in models:
        stage, sep, spec = value.partition("=")
        if not sep or stage not in ("det", "cls", "rec"):
            raise OcrQuantError(f"--model {value}: with --task e2e write det=M, cls=M (or cls=none), rec=M")
        specs[stage] = spec
    cls_spec = specs.get("cls", DEFAULT_CHAIN["cls"])

    lexicon = "all" if default_vocab_dir(data) else None  # lexicon figures where ICDAR's lexicons are present
    chain = ChainSpec(
        det=specs.get("det", DEFAULT_CHAIN["det"]),
        cls=None if cls_spec == "none" else cls_spec,
        rec=specs.get("rec", DEFAULT_CHAIN["rec"]),
    )
    result = eval_e2e(
        data,
        chain,
        E2EScoring(lexicon=lexicon, limit=limit),
        data_format=data_format,
        output=output,
        backend=backend,
        runtime=RuntimeOptions(threads=threads),
    )
    table = Table(title=f"e2e | {result.model} | {data}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in result.flat_metrics().items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    console.print(table)


def _task_options(task: str | None, options: dict, model: str) -> dict:
    """Keep only the options that belong to the task (det options are meaningless for rec)."""

    name = task or resolve_model(model).task
    if not name:
        return {k: v for k, v in options.items() if v is not None}
    allowed = {f.name for f in fields(get_task_class(name).Config)}
    given = {k: v for k, v in options.items() if v is not None}
    wrong = set(given) - allowed
    if wrong:
        raise OcrQuantError(f"option(s) {', '.join(sorted(wrong))} do not apply to task {name}")
    return given


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
