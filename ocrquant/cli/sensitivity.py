"""``ocrquant sensitivity``: rank the quantized layers of an OCR model by what INT8 costs in each."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ocrquant.cli.common import (
    RayOpt,
    ShapeOpt,
    StrictOpt,
    WorkersOpt,
    check_threads,
    console,
    guard_outputs,
)
from ocrquant.data import READ_POLICY
from ocrquant.quantization import QuantConfig
from ocrquant.tuning.executor import ExecutorConfig, executor_for
from ocrquant.tuning.sensitivity import SensitivityConfig, sensitivity


def register(app: typer.Typer) -> None:
    app.command("sensitivity")(sensitivity_cmd)


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def sensitivity_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="Zoo name or path to a float .onnx model.")],
    calib_data: Annotated[
        Path,
        typer.Option(
            "--calib-data",
            help="Calibration images (labelled dataset directory). Unless --val-data is given, the "
            "validation subset is drawn from this directory's images NOT used for calibration.",
        ),
    ],
    task: Annotated[
        str | None, typer.Option("--task", help="det, cls or rec (inferred for zoo models).")
    ] = None,
    val_data: Annotated[
        Path | None,
        typer.Option(
            "--val-data",
            help="Labelled validation set (default: held-out part of --calib-data). Never the test set.",
        ),
    ] = None,
    val_size: Annotated[
        int, typer.Option("--val-size", help="Validation images (random, seeded).", min=1)
    ] = 300,
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            help="only-float: INT8 model with only this layer float (gain vs INT8); only-quantized: "
            "float model with only this layer INT8 (drop vs FP32).",
        ),
    ] = "only-float",
    granularity: Annotated[
        str,
        typer.Option(
            "--granularity",
            help="block: a float layer keeps its activation nodes (HardSwish, SE, residual Add up to the "
            "next layer) float too, so its output tensor is float; layer: only its weights are float "
            "(its input and output stay quantized where neighbours are quantized).",
        ),
    ] = "block",
    metric: Annotated[
        bool, typer.Option("--metric/--no-metric", help="Measure the task metric on the validation subset.")
    ] = True,
    snr: Annotated[
        bool,
        typer.Option("--snr/--no-snr", help="Measure the output SNR against FP32 (first --snr-samples)."),
    ] = True,
    snr_samples: Annotated[
        int, typer.Option("--snr-samples", help="Validation images whose FP32 outputs are kept for the SNR.")
    ] = 64,
    latency: Annotated[
        str,
        typer.Option(
            "--latency",
            help="Cost of keeping a layer float: estimate (MACs x measured ms/MAC), measure (interleaved "
            "timing per layer, slow and noisy on a shared CPU) or none.",
        ),
    ] = "estimate",
    calib_size: Annotated[
        int, typer.Option("--calib-size", help="Calibration images (as ocrquant quantize).")
    ] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the calibration pick (validation uses seed+1).")] = 0,
    method: Annotated[
        str | None,
        typer.Option(
            help="Range method of the INT8 variants: min_max, kl, percentile, mse, or auto (default: auto, "
            "which runs its held-out trials first)."
        ),
    ] = None,
    target: Annotated[str, typer.Option(help="Deployment target (as ocrquant quantize).")] = "ort-cpu",
    threads: Annotated[int, typer.Option(help="Runtime threads for evaluation and timing.")] = 2,
    work_dir: Annotated[
        Path | None, typer.Option("--work-dir", help="Keep the INT8/reference models here (default: temp).")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the full result as JSON.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a PNG: delta per layer and SNR.")] = None,
    top: Annotated[int, typer.Option(help="Print the N most sensitive layers (0 = all).", min=0)] = 0,
    strict: StrictOpt = False,
    input_shape: ShapeOpt = None,
    workers: WorkersOpt = 0,
    ray_address: RayOpt = None,
) -> None:
    """Rank quantized Conv/MatMul/Gemm layers by the task-metric change and output SNR when only that
    layer is float (or only that layer is quantized), with the latency cost of keeping it float."""

    guard_outputs([model], files=[json_out, plot], folders=[work_dir], datasets=[calib_data, val_data])
    check_threads(threads)
    READ_POLICY.strict = strict
    config = QuantConfig(target=target, calib_size=calib_size, seed=seed, method=method)
    options = SensitivityConfig(
        val_size=val_size,
        mode=mode,
        metric=metric,
        snr=snr,
        granularity=granularity,
        latency=latency,
        threads=threads,
        snr_samples=snr_samples,
        input_shape=input_shape,
    )
    with executor_for(ExecutorConfig(workers, ray_address)) as executor:
        result = sensitivity(
            model, task, calib_data, options, config, val_data=val_data, work_dir=work_dir,
            json_path=json_out, plot_path=plot, executor=executor,
        )  # fmt: skip
    v = result.validation
    base = "INT8" if result.mode == "only-float" else "FP32"
    scores = (
        f": FP32 {100 * result.fp32_metric:.2f}, INT8 {100 * result.int8_metric:.2f} {result.metric_name}"
        if metric
        else " (output SNR only, --no-metric)"
    )
    table = Table(
        title=f"{result.task} sensitivity ({result.mode}, {granularity}) on {v['validation_images']} "
        f"validation images ({v['source']}){scores}"
    )
    cols = ("rank", "layer", "op", "MMACs", result.metric_name, f"delta vs {base} (pt)", "fidelity", "SNR dB")
    for col in cols:
        table.add_column(col, justify="left" if col in ("layer", "op") else "right")
    table.add_column(f"float cost ms ({result.latency_source})", justify="right")
    rows = result.ranked()
    for i, r in enumerate(rows[: top or len(rows)], 1):
        table.add_row(
            str(i),
            r.name,
            r.op_type,
            _fmt(r.macs / 1e6 if r.macs is not None else None, ".2f"),
            _fmt(100 * r.metric if r.metric is not None else None, ".2f"),
            _fmt(r.delta_points, "+.2f"),
            _fmt(r.fidelity, ".4f"),
            _fmt(r.snr_db, ".1f"),
            _fmt(r.latency_cost_ms, ".3f"),
        )
    console.print(table)
    lat = result.latency_ms
    if lat:
        console.print(
            f"latency (median ms per call, {result.settings.get('threads')} threads, interleaved): "
            f"FP32 {lat['fp32']:.2f}, INT8 {lat['int8']:.2f}, INT8 with every layer "
            f"float {lat['all_float']:.2f}"
        )
    if json_out:
        console.print(f"wrote {json_out}")
    if plot:
        console.print(f"wrote {plot}")
