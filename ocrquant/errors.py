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


def missing_extra(extra: str, what: str, exc: ImportError | None = None) -> OcrQuantError:
    """The one-line error for a feature whose optional dependencies are not installed."""
    missing = f" ({exc.name} not found)" if exc is not None and exc.name else ""
    return OcrQuantError(f"{what} needs the optional extra{missing}: pip install 'ocrquant[{extra}]'")


def one_line(exc: BaseException) -> str:
    """The error as the CLI prints it: ``error: <message>`` on one line, whatever the message holds
    (onnxruntime's messages carry newlines)."""
    return f"error: {' '.join(str(exc).split())}"


def describe_failure(exc: BaseException) -> str:
    """The one line a command prints when it fails, whatever failed.

    * :class:`OcrQuantError`: its message (it already names the file).
    * :class:`OSError` (unwritable folder, disk full, a file where a folder is expected): the path
      and the system's reason, e.g. ``error: /data/out.json: Permission denied``.
    * :class:`MemoryError`: what ran out, and the usual cause.
    * anything else is a defect of ocrquant: its type and message, and how to get the traceback.
    """
    if isinstance(exc, OcrQuantError):
        return one_line(exc)
    if isinstance(exc, OSError):
        where = exc.filename if exc.filename is not None else ""
        other = f" -> {exc.filename2}" if exc.filename2 is not None else ""
        reason = exc.strerror or str(exc)
        return one_line(OcrQuantError(reason, f"{where}{other}") if where else OcrQuantError(reason))
    if isinstance(exc, MemoryError):
        return one_line(OcrQuantError("out of memory (an image or batch too large for this machine?)"))
    return one_line(
        OcrQuantError(f"internal error ({type(exc).__name__}: {exc}); rerun with --debug for the traceback")
    )


def run_script(main: Callable[[], None]) -> None:
    """Run a script's ``main`` the way the CLI runs a command: bad input (an :class:`OcrQuantError`)
    becomes one line on stderr and exit code 2, not a traceback."""
    try:
        main()
    except (OcrQuantError, OSError) as exc:
        print(describe_failure(exc), file=sys.stderr)
        sys.exit(2)
