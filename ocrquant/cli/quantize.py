"""``ocrquant quantize``: post-training INT8 quantization of an OCR model to a QDQ ONNX file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ocrquant.api import infer_task, input_shape_options
from ocrquant.cli.common import (
    RayOpt,
    ShapeOpt,
    StrictOpt,
    WorkersOpt,
    console,
    guard_outputs,
    non_negative_number,
    percent,
    unit_interval,
)
from ocrquant.data import READ_POLICY, open_dataset
from ocrquant.errors import OcrQuantError
from ocrquant.fileio import read_sidecar, sidecar_path
from ocrquant.quantization import QuantConfig
from ocrquant.quantization.algorithms import create_algorithm
from ocrquant.tuning import quantize
from ocrquant.tuning.budget import DEFAULT_CONFIDENCE, BudgetConfig, escalate_to_budget, quantize_with_budget
from ocrquant.tuning.executor import ExecutorConfig, executor_for
from ocrquant.tuning.method_search import search_summary
from ocrquant.zoo.resolve import resolve_model


def algorithm_options(values: list[str] | None) -> dict[str, dict[str, Any]]:
    """``--algo-option distill.data_size=500`` -> ``{"distill": {"data_size": 500}}``, checked by
    building each algorithm once: a misspelt name or option fails before calibration starts."""
    out: dict[str, dict[str, Any]] = {}
    for value in values or []:
        key, sep, text = value.partition("=")
        name, dot, option = key.partition(".")
        if not (sep and dot and name and option):
            raise OcrQuantError(f"--algo-option {value}: write NAME.KEY=VALUE, e.g. distill.data_size=500")
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = text
        out.setdefault(name, {})[option] = parsed

    for name, options in out.items():  # unknown names and options fail here, before any work
        create_algorithm(name, **options)
    return out


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize_cmd)


def quantize_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="Zoo name or path to a float .onnx model.")],
    calib_data: Annotated[
        Path,
        typer.Option(
            "--calib-data",
            help="Calibration images (a labelled dataset "
            "directory; labels are not used). Never the test set.",
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Quantized .onnx to write (a <name>.quant.json sidecar is written beside it).",
        ),
    ],
    task: Annotated[
        str | None, typer.Option("--task", help="det, cls or rec (inferred for zoo models).")
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            help="Range method: min_max, kl, percentile, mse, or auto (each tried, the best on held-out "
            "calibration-side images kept) (default: auto)."
        ),
    ] = None,
    percentile: Annotated[
        float | None, typer.Option(help="Percentile for --method percentile (0-100].", parser=percent)
    ] = None,
    target: Annotated[
        str, typer.Option(help="Deployment target: ort-cpu, openvino, tensorrt or npu-pow2.")
    ] = "ort-cpu",
    calib_size: Annotated[
        int, typer.Option("--calib-size", help="Calibration images (random, seeded).", min=1)
    ] = 200,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", help="Images per calibration run.", min=1)
    ] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the calibration pick.", min=0)] = 0,
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", help="Keep float: node name, op type or glob pattern (repeatable)."),
    ] = None,
    per_channel: Annotated[
        bool | None,
        typer.Option(
            "--per-channel/--per-tensor", help="Weight scales per output channel (default: the target's)."
        ),
    ] = None,
    algo: Annotated[
        list[str] | None,
        typer.Option(
            "--algo",
            help="Extra accuracy algorithm (repeatable): cle, act_cle, hs_cle, hs_scale, hs_floor, "
            "adaround, bias_correction, distill (output distillation, needs the torch extra), fallback. "
            "The target's defaults (ort-cpu: hs_cle, hs_floor, weight_width, det: act_cle instead of "
            "hs_cle; openvino: hs_scale, weight_width, det: act_cle too) always run unless "
            "--no-default-algos.",
        ),
    ] = None,
    algo_option: Annotated[
        list[str] | None,
        typer.Option(
            "--algo-option",
            help="An algorithm's option, NAME.KEY=VALUE (repeatable; VALUE read as JSON, else text), "
            "e.g. distill.data_size=500 or adaround.max_reduction=8192.",
        ),
    ] = None,
    no_default_algos: Annotated[
        bool, typer.Option("--no-default-algos", help="Do not run the default algorithms.")
    ] = False,
    int16: Annotated[
        list[str] | None, typer.Option("--int16", help="Activation tensor to keep in 16 bits (repeatable).")
    ] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Calibration cache directory.")] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Do not read or write the calibration cache.")
    ] = False,
    max_drop: Annotated[
        float | None,
        typer.Option(
            "--max-drop",
            help="Accuracy budget in points of the task metric: keep the fewest, most sensitive blocks "
            "float until INT8 is within it on validation images (held-out calibration-side images, "
            "or --val-data).",
            parser=non_negative_number,
        ),
    ] = None,
    val_data: Annotated[
        Path | None, typer.Option("--val-data", help="Validation set for --max-drop (never the test set).")
    ] = None,
    val_size: Annotated[
        int | None,
        typer.Option(
            "--val-size",
            help="Validation images for --max-drop (default: 4000 rec/cls crops, 60 det images; one image "
            "is 100/N points, so a small set cannot resolve a budget of a few tenths of a point).",
            min=1,
        ),
    ] = None,
    confidence: Annotated[
        float,
        typer.Option(
            "--confidence",
            help="One-sided level at which --max-drop must hold: a set passes when its validation drop "
            "plus z x its paired bootstrap standard error is within the budget (0.5: the drop alone).",
            parser=unit_interval,
        ),
    ] = DEFAULT_CONFIDENCE,
    keep_all_int8: Annotated[
        bool,
        typer.Option(
            "--keep-all-int8",
            help="With --method auto: keep every quantizable layer INT8 even when the model may lose more "
            "than a point (90 % bound, 1000+ held-out images; by default the most sensitive blocks then "
            "stay float until it is within a point).",
        ),
    ] = False,
    strict: StrictOpt = False,
    input_shape: ShapeOpt = None,
    workers: WorkersOpt = 0,
    ray_address: RayOpt = None,
) -> None:
    """Quantize a float model to INT8 (QDQ) with calibrated ranges; print what was quantized."""

    guard_outputs([model, cache_dir], files=[output, sidecar_path(output)], datasets=[calib_data, val_data])
    READ_POLICY.strict = strict

    # resolved once: everything below works on these objects
    resolved = resolve_model(model)
    task_name = infer_task(resolved, task)
    calib = open_dataset(calib_data, task_name)
    val = open_dataset(val_data, task_name) if val_data is not None else None
    task_options: dict[str, Any] = {}
    if input_shape is not None:  # a fixed-shape model is calibrated at its own input size
        task_options = input_shape_options(task_name, input_shape)
    # None: the target's per-task defaults (resolved once the task is known), plus --algo
    algorithms: list[str] | None = list(algo or []) if no_default_algos else None
    config = QuantConfig(
        method=method,
        method_options={"percentile": percentile} if percentile is not None else None,
        target=target,
        calib_size=calib_size,
        batch_size=batch_size,
        seed=seed,
        per_channel=per_channel,
        exclude=list(exclude or []),
        algorithms=algorithms,
        extra_algorithms=[] if no_default_algos else list(algo or []),
        dtype_overrides={t: "int16" for t in int16 or []},
        cache_dir=cache_dir,
        use_cache=not no_cache,
        algorithm_options=algorithm_options(algo_option),
        task_options=task_options,
    )
    with executor_for(ExecutorConfig(workers, ray_address)) as executor:
        if max_drop is not None:
            result, search = quantize_with_budget(
                resolved,
                task_name,
                calib,
                val,
                output,
                config,
                BudgetConfig(max_drop, val_size=val_size, confidence=confidence),
                executor=executor,
            )
            console.print(search.summary())
        else:
            result = quantize(resolved, task_name, calib, output, config, executor)
            result, search = escalate_to_budget(
                resolved, result.task, calib, result, config, enabled=not keep_all_int8, executor=executor
            )
            if search is not None:
                console.print(search.summary())
    table = Table(
        title=f"{result.task} | {result.target} | {result.method} | "
        f"{result.num_calibration_images} calibration images"
    )
    table.add_column("op type")
    table.add_column("quantized", justify="right")
    table.add_column("float", justify="right")
    for op, c in result.node_counts.items():
        table.add_row(op, str(c["quantized"]), str(c["float"]))
    total_q = sum(c["quantized"] for c in result.node_counts.values())
    total_f = sum(c["float"] for c in result.node_counts.values())
    table.add_row("[bold]total", f"[bold]{total_q}", f"[bold]{total_f}")
    console.print(table)
    for name, report in result.algorithms.items():
        console.print(f"algorithm {name}: {report}")
    search = read_sidecar(result.output).get("method_search")
    if search:
        console.print(search_summary(search))
    t = result.timings
    console.print(
        f"time: {t['total_s']:.1f} s (prepare {t['prepare_s']:.1f}, calibration {t['calibration_s']:.1f}"
        f"{' cached' if result.cache_hit else ''}, ranges {t['ranges_s']:.1f}, write {t['write_s']:.1f})"
    )
    console.print(f"wrote {result.output} and {result.sidecar}")
