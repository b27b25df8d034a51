"""User-facing errors.

Every problem a user can cause (bad file, bad option, wrong model) raises :class:`OcrQuantError`.
The CLI turns it into one line on stderr and a non-zero exit, with no traceback unless ``--debug``.
"""

from __future__ import annotations

from pathlib import Path


class OcrQuantError(Exception):
    """An error caused by the user's input; its message is one line naming the file and the problem."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        super().__init__(f"{path}: {message}" if path is not None else message)
