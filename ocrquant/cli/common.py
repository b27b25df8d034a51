"""Shared CLI pieces: console, logging, the error boundary."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ocrquant.fileio import check_output
from ocrquant.runtime.base import check_threads as check

# Piped output (logs, CI, README examples) gets a wide table instead of rich's 80-column default.
console = Console(stderr=False, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)

STATE = {"debug": False}


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def guard_outputs(
    inputs: list[Any],
    files: list[Path | None] = (),
    folders: list[Path | None] = (),
    datasets: list[Path | None] = (),
) -> None:
    """Apply the output-path policy (:func:`ocrquant.fileio.check_output`) to every output a command
    will write, before it does any work; ``inputs`` are the files the user named (zoo names are
    ignored), ``datasets`` the folders of samples the command reads."""

    given = [Path(str(i)) for i in inputs if i is not None and str(i)]
    sets = [Path(str(d)) for d in datasets if d is not None]
    for target in files:
        if target is not None:
            check_output(target, given, datasets=sets)
    for target in folders:
        if target is not None:
            check_output(target, given, folder=True, datasets=sets)


def _number(text: str, option_hint: str) -> float:

    try:
        value = float(text)
    except ValueError:
        raise typer.BadParameter(f"'{text}' is not a number") from None
    if not math.isfinite(value):
        raise typer.BadParameter(f"'{text}' is not a finite number ({option_hint})")
    return value


def unit_interval(text: str) -> float:
    """A probability / threshold option: a finite number in [0, 1] (``nan`` passes click's ranges)."""
    value = _number(text, "0 to 1")
    if not 0.0 <= value <= 1.0:
        raise typer.BadParameter(f"{value:g} is not between 0 and 1")
    return value


def positive_number(text: str) -> float:
    """A ratio or scale option: a finite number > 0."""
    value = _number(text, "> 0")
    if value <= 0:
        raise typer.BadParameter(f"{value:g} is not > 0")
    return value


def non_negative_number(text: str) -> float:
    """A budget in points: a finite number >= 0."""
    value = _number(text, ">= 0")
    if value < 0:
        raise typer.BadParameter(f"{value:g} is not >= 0")
    return value


def percent(text: str) -> float:
    """A percentile option: a finite number in (0, 100]."""
    value = _number(text, "0 to 100")
    if not 0.0 < value <= 100.0:
        raise typer.BadParameter(f"{value:g} is not in (0, 100]")
    return value


def check_threads(threads: int) -> None:
    """The thread count every runtime session gets; see :func:`ocrquant.runtime.base.check_threads`."""

    check(threads)


#: ``--limit``: one meaning everywhere: absent or 0 = every sample, N = the first N, negative refused
LimitOpt = Annotated[
    int | None, typer.Option("--limit", help="Use the first N samples only (0: all).", min=0)
]
ThreadsOpt = Annotated[
    int, typer.Option(help="Runtime threads (0 = all cores; at most the CPU count).", min=0)
]
StrictOpt = Annotated[
    bool,
    typer.Option("--strict", help="Stop at the first unreadable sample instead of skipping and naming it."),
]
ShapeOpt = Annotated[
    tuple[int, int, int, int] | None,
    typer.Option(
        "--input-shape",
        help="Fix the model input, N C H W (N -1: any batch): det resizes every image to H x W "
        "(e.g. 1 3 512 896), cls and rec take C x H x W.",
    ),
]
WorkersOpt = Annotated[
    int,
    typer.Option(
        "--workers",
        help="Run the search's independent trials (auto's range candidates, the budget search's and "
        "sensitivity's per-layer probes) in N local processes, each with cores/N runtime threads "
        "(0 or 1: in this process).",
        min=0,
    ),
]
RayOpt = Annotated[
    str | None,
    typer.Option(
        "--ray",
        help="Run the search's trials on the Ray cluster at HOST:PORT (or auto: the cluster this "
        "machine belongs to; local: start one here). Needs the ray extra; paths must be visible to "
        "every node.",
    ),
]
