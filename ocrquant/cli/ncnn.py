"""``ocrquant ncnn convert | quantize | run``: models to ncnn, ncnn INT8 from ocrquant's calibration."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ocrquant.api import build_task, infer_task
from ocrquant.cli.common import LimitOpt, console, guard_outputs
from ocrquant.data import load_image, open_dataset, sample_calibration
from ocrquant.errors import OcrQuantError
from ocrquant.frontends.ncnn_export import (
    convert_onnx,
    convert_torch_checkpoint,
    ncnn_model_for,
    torch_source,
)
from ocrquant.quantization.ncnn_int8 import NcnnQuantConfig, quantize_ncnn, quantize_with_table
from ocrquant.report import COLUMNS, row_cells
from ocrquant.report.ncnn import NcnnReportConfig, ncnn_report
from ocrquant.tasks import get_task_class
from ocrquant.zoo.resolve import resolve_model

ncnn_app = typer.Typer(
    help="ncnn: convert (pnnx), INT8 calibration table + INT8 model, float-vs-INT8 report.",
    no_args_is_help=True,
)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Zoo name or path to an .onnx file.")]


def _model_onnx(model: str) -> Path:

    return resolve_model(model).path


@ncnn_app.command("convert")
def convert_cmd(
    model: ModelOpt,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help=".param path (default: <stem>.ncnn.param beside it)."),
    ] = None,
    tolerance: Annotated[float, typer.Option(help="Max abs difference allowed vs onnxruntime.")] = 1e-3,
) -> None:
    """Convert to ncnn with pnnx (TorchScript route for torch-exported models, else ONNX), verified against
    onnxruntime on a real image at a size pnnx did not see; writes .param, .bin and the name-map .json."""

    guard_outputs([model], files=[output])
    onnx_path = _model_onnx(model)
    source = torch_source(onnx_path)
    if source is not None:
        result = convert_torch_checkpoint(source[0], onnx_path, source[1], output, tolerance=tolerance)
    else:
        result = convert_onnx(onnx_path, output, tolerance=tolerance)
    table = Table("field", "value", show_header=False, title=f"ncnn convert {model}")
    table.add_row("param", str(result.param))
    table.add_row("bin", f"{result.bin} ({result.bin.stat().st_size / 2**20:.2f} MB)")
    table.add_row("route", str(result.info.get("route")))
    table.add_row("inputs", ", ".join(f"{b.name} -> {b.blob}" for b in result.inputs))
    table.add_row("outputs", ", ".join(f"{b.name} -> {b.blob}" for b in result.outputs))
    table.add_row("onnx fixes", str(result.info.get("onnx_fixes") or "-"))
    table.add_row(
        "max abs diff vs onnxruntime",
        f"{result.info['max_abs_diff_vs_onnxruntime']:.3g} at {result.info['verify_input_shape']}",
    )
    console.print(table)


Int8LayersOpt = Annotated[
    str,
    typer.Option(
        "--int8-layers",
        help="faster: INT8 only where it runs faster than float on this CPU (each layer timed); "
        "all: every conv / fc, as ncnn2int8.",
    ),
]


@ncnn_app.command("quantize")
def quantize_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="Zoo name, .onnx, or float ncnn .param.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="INT8 .param to write (.bin/.table/.json beside).")
    ],
    calib_data: Annotated[
        Path | None, typer.Option("--calib-data", help="Calibration set (training data, never the test set).")
    ] = None,
    table: Annotated[
        Path | None, typer.Option("--table", help="Apply this calibration table instead of calibrating.")
    ] = None,
    task: Annotated[
        str | None, typer.Option("--task", help="Task whose preprocessing feeds the model.")
    ] = None,
    method: Annotated[
        str, typer.Option(help="Activation range method: percentile (99.99), kl, min_max, mse.")
    ] = "percentile",
    calib_size: Annotated[int, typer.Option("--calib-size", help="Calibration images.", min=1)] = 200,
    seed: Annotated[int, typer.Option(help="Calibration sampling seed.")] = 0,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="ncnn layer name to keep float (repeatable).")
    ] = None,
    threads: Annotated[int, typer.Option(help="ncnn threads for calibration (0 = default).")] = 0,
    int8_layers: Int8LayersOpt = "faster",
) -> None:
    """Write ncnn's INT8 calibration table (per-channel weight scales, bottom blob scales from ocrquant's
    calibrator) and the INT8 model, as ncnn2table + ncnn2int8 would."""

    guard_outputs([model, table], files=[output], datasets=[calib_data])
    if model.endswith(".param"):
        float_param = Path(model)
    else:
        float_param = ncnn_model_for(_model_onnx(model)).param
    if table is not None:
        summary = quantize_with_table(float_param, table, output)
        console.print(f"wrote {output} ({len(summary['quantized_layers'])} INT8 layers) from table {table}")
        return
    if calib_data is None:
        raise OcrQuantError("--calib-data (or --table) is required")

    if model.endswith(".param"):
        if not task:
            raise OcrQuantError("--task is required with an ncnn .param model")

        task_obj = get_task_class(task)()
    else:
        resolved = resolve_model(model)
        task_obj = build_task(infer_task(resolved, task), resolved)
    picked = sample_calibration(open_dataset(calib_data, task_obj.name), calib_size, seed)

    def inputs():
        for s in picked:
            yield task_obj.preprocess([load_image(s)]).inputs

    result = quantize_ncnn(
        float_param,
        inputs,
        output,
        NcnnQuantConfig(
            calib_size=len(picked),
            method=method,
            exclude=tuple(exclude or ()),
            int8_layers=int8_layers,
            threads=threads,
        ),
    )
    console.print(
        f"wrote {result.param}, {result.bin.name}, table {result.table.name}: "
        f"{len(result.quantized_layers)} INT8 layers ({len(result.requantized_layers)} requantized), "
        f"{len(result.float_weight_layers)} float weight layers "
        f"({len(result.slower_in_int8)} of them slower in INT8 on this CPU); "
        f"{result.method} over {result.calib_size} images"
    )


@ncnn_app.command("run")
def run_cmd(
    model: ModelOpt,
    data: Annotated[Path, typer.Option("--data", "-d", help="Labelled test set.")],
    calib_data: Annotated[Path, typer.Option("--calib-data", help="Calibration set (training data).")],
    task: Annotated[str | None, typer.Option("--task", help="Task (inferred for zoo models).")] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Run directory (INT8 model, table, results).")
    ] = Path("runs/ncnn"),
    method: Annotated[
        str, typer.Option(help="Activation range method: percentile (99.99), kl, min_max, mse.")
    ] = "percentile",
    calib_size: Annotated[int, typer.Option("--calib-size", help="Calibration images.", min=1)] = 200,
    limit: LimitOpt = None,
    threads: Annotated[int, typer.Option(help="ncnn threads for evaluation and latency.")] = 2,
    latency_images: Annotated[int, typer.Option(help="Test images timed (interleaved float/INT8).")] = 10,
    canvas_size: Annotated[int | None, typer.Option(help="det-craft: canvas size (1280).")] = None,
    limit_side_len: Annotated[int | None, typer.Option(help="det: resize limit (960).")] = None,
    onnxruntime: Annotated[
        bool, typer.Option(help="Also evaluate the float ONNX model with onnxruntime (proves equality).")
    ] = True,
    int8_layers: Int8LayersOpt = "faster",
    max_float: Annotated[
        int, typer.Option("--max-float", help="Keep up to N most sensitive conv layers float (0 = none).")
    ] = 0,
    target_cos: Annotated[
        float, typer.Option("--target-cos", help="Stop keeping layers float at this output cosine.")
    ] = 0.99,
) -> None:
    """Float vs INT8 in ncnn: metric on the test set, model size, interleaved latency per image."""

    guard_outputs([model], folders=[out], datasets=[data, calib_data])
    options = {k: v for k, v in {"canvas_size": canvas_size, "limit_side_len": limit_side_len}.items() if v}
    row = ncnn_report(
        model,
        task,
        data,
        calib_data,
        NcnnReportConfig(
            out_dir=out,
            calib_size=calib_size,
            limit=limit,
            threads=threads,
            latency_images=latency_images,
            task_options=options,
            compare_onnxruntime=onnxruntime,
        ),
        NcnnQuantConfig(method=method, int8_layers=int8_layers, max_float=max_float, target_cos=target_cos),
    )
    table = Table(*COLUMNS, title=f"ocrquant ncnn run -> {out}")
    table.add_row(*row_cells(row))
    console.print(table, width=None if console.is_terminal else max(console.width, 150))
    d = row.details
    ort = d["onnxruntime float metric"]
    if ort is not None:
        gap = 100 * (row.float_metric - ort)
        console.print(f"onnxruntime float {row.metric}: {ort:.4f} (ncnn float - onnxruntime: {gap:+.2f} pt)")
    cal = d["calibration"]
    console.print(
        f"INT8/float size {d['size ratio']:.3f}; {d['quantized layers']} INT8 layers "
        f"({d['requantized layers']} requantized); {len(row.float_nodes)} float weight layers "
        f"({len(d['kept float, slower in INT8 here'])} of them slower in INT8 on this CPU); "
        f"calibration {cal['method']} over {cal['images']} images; {d['threads']} threads"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(ncnn_app, name="ncnn")
