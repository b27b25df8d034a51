"""User-facing errors.

Every problem a user can cause (bad file, bad option, wrong model) raises :class:`OcrQuantError`.
The CLI turns it into one line on stderr and a non-zero exit, with no traceback unless ``--debug``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path


class OcrQuantError(Exception):
    """An error caused by the user's input; its message is one line naming the file and the problem."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        super().__init__(f"{path}: {message}" if path is not None else message)


def one_line(exc: BaseException) -> str:
    """The error as the CLI prints it: ``error: <message>`` on one line, whatever the message holds
    (onnxruntime's messages carry newlines)."""
    return f"error: {' '.join(str(exc).split())}"


def run_script(main: Callable[[], None]) -> None:
    """Run a script's ``main`` the way the CLI runs a command: bad input (an :class:`OcrQuantError`)
    becomes one line on stderr and exit code 2, not a traceback."""
    try:
        main()
    except OcrQuantError as exc:
        print(one_line(exc), file=sys.stderr)
        sys.exit(2)
