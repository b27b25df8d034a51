"""Shared CLI pieces: console, logging, the error boundary."""

from __future__ import annotations

import logging
import sys

from rich.console import Console

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


def parse_shape(values: tuple[int, ...] | list[int] | None) -> tuple[int, int] | None:
    """``--input-shape 1 3 512 896`` -> (512, 896)."""
    from ocrquant.errors import OcrQuantError

    if not values:
        return None
    if len(values) != 4 or any(v <= 0 for v in values):
        raise OcrQuantError(f"--input-shape wants four positive numbers N C H W, got {list(values)}")
    return values[2], values[3]
