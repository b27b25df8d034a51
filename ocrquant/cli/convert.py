"""``ocrquant convert``: a training-framework model to a checked ONNX file.

Each framework has a converter function in :data:`CONVERTERS` (a registry, so adding the torch one is
one entry); the command parses, calls the library, and prints the report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ocrquant.cli.common import console, guard_outputs
from ocrquant.errors import OcrQuantError
from ocrquant.frontends.paddle import PaddleConvertConfig, convert_paddle, locate_model
from ocrquant.frontends.torch import OPSET, convert_torch


@dataclass
class ConvertArgs:
    """The command's options, as one object handed to a framework's converter."""

    output: Path
    model_dir: Path | None
    model: Path | None
    params: Path | None
    input_shape: tuple[int, int, int, int] | None
    opset: int
    task: str | None
    char_dict: Path | None
    tolerance: float
    verify: bool
    checkpoint: Path | None = None  # torch: state_dict .pth
    arch: str = "craft"  # torch: registered architecture or module:factory
    torchscript: Path | None = None  # torch: also write TorchScript here


def _convert_paddle(args: ConvertArgs) -> Any:

    program, params = locate_model(args.model_dir, args.model, args.params)
    config = PaddleConvertConfig(
        opset=args.opset,
        input_shape=args.input_shape,
        task=args.task,
        char_dict=args.char_dict,
        verify=args.verify,
        tolerance=args.tolerance,
    )
    return convert_paddle(program, params, args.output, config)


def _convert_torch(args: ConvertArgs) -> Any:

    if args.checkpoint is None:
        raise OcrQuantError("--framework torch needs --checkpoint FILE.pth (a state_dict)")
    if args.input_shape is not None or args.char_dict is not None or args.model_dir or args.model:
        raise OcrQuantError(
            "--framework torch takes --checkpoint and --arch, not --input-shape/--char-dict/--model"
        )
    return convert_torch(
        args.checkpoint, args.output, args.arch, task=args.task, opset=max(args.opset, OPSET),
        torchscript=args.torchscript, verify_images=2 if args.verify else 0, tolerance=args.tolerance,
    )  # fmt: skip


CONVERTERS: dict[str, Callable[[ConvertArgs], Any]] = {"paddle": _convert_paddle, "torch": _convert_torch}


def convert_cmd(
    framework: Annotated[str, typer.Option("--framework", "-f", help="Source framework: paddle or torch.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="ONNX file to write (atomically).")],
    model_dir: Annotated[
        Path | None, typer.Option("--model-dir", help="Folder with one .pdmodel and its .pdiparams.")
    ] = None,
    model: Annotated[Path | None, typer.Option("--model", "-m", help="Model file (.pdmodel).")] = None,
    params: Annotated[
        Path | None, typer.Option("--params", help="Weights file (default: the model's .pdiparams).")
    ] = None,
    input_shape: Annotated[
        tuple[int, int, int, int] | None,
        typer.Option(
            "--input-shape",
            help="Fix the input to N C H W, e.g. 1 3 512 896; N -1 keeps the batch dynamic "
            "(default: all dynamic).",
        ),
    ] = None,
    opset: Annotated[int, typer.Option(help="Minimum ONNX opset (raised where an operator needs it).")] = 13,
    task: Annotated[
        str | None,
        typer.Option("--task", help="det, cls or rec: picks the check's inputs (default: inferred)."),
    ] = None,
    char_dict: Annotated[
        Path | None, typer.Option("--char-dict", help="rec: dictionary to store in the ONNX metadata.")
    ] = None,
    tolerance: Annotated[
        float, typer.Option(help="Largest allowed max-abs difference to the framework's outputs.")
    ] = 1e-3,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Check the ONNX outputs against the framework's.")
    ] = True,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="torch: state_dict checkpoint (.pth), weights only.")
    ] = None,
    arch: Annotated[
        str, typer.Option("--arch", help="torch: network definition, 'craft' or module:factory.")
    ] = "craft",
    torchscript: Annotated[
        Path | None, typer.Option("--torchscript", help="torch: also write a TorchScript file (.pt).")
    ] = None,
) -> None:
    """Convert a framework model to ONNX and check it reproduces the framework's outputs on real inputs."""
    if framework not in CONVERTERS:
        raise OcrQuantError(
            f"unknown --framework '{framework}' (choose from {', '.join(sorted(CONVERTERS))})"
        )
    if input_shape is not None and (min(input_shape[1:]) <= 0 or input_shape[0] == 0 or input_shape[0] < -1):
        raise OcrQuantError(
            f"--input-shape wants N C H W, C H W > 0 and N > 0 or -1, got {list(input_shape)}"
        )
    guard_outputs([model_dir, model, params, checkpoint, char_dict], files=[output, torchscript])
    args = ConvertArgs(
        output, model_dir, model, params, input_shape, opset, task, char_dict, tolerance, verify,
        checkpoint=checkpoint, arch=arch, torchscript=torchscript,
    )  # fmt: skip
    report = CONVERTERS[framework](args)
    table = Table(title=f"convert {framework} -> ONNX", show_header=False)
    table.add_column("field")
    table.add_column("value")
    table.add_row("source", str(report.source))
    table.add_row("output", str(report.output))
    table.add_row("opset", str(report.opset))
    table.add_row("inputs", ", ".join(f"{k}{v}" for k, v in report.inputs.items()))
    table.add_row("outputs", ", ".join(f"{k}{v}" for k, v in report.outputs.items()))
    table.add_row("task", str(report.task))
    if report.max_abs_diff is None:
        table.add_row("check", "skipped (--no-verify)")
    else:
        table.add_row("max abs diff", f"{report.max_abs_diff:.3g} on {len(report.verified_on)} real inputs")
    for key, value in getattr(report, "extra", {}).items():
        table.add_row(key, value)
    table.add_row("seconds", f"{report.seconds:.1f}")
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("convert")(convert_cmd)
