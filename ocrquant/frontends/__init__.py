"""Framework frontends: turn a training-framework model (Paddle, PyTorch) into ONNX.

A registry, not an if-chain: ``FRONTENDS`` maps a framework name (``ZooEntry.framework``) to the
module implementing it. Modules are imported only when used, because each needs a heavy optional
extra (``ocrquant[paddle]``, ``ocrquant[torch]``) that most installs do not have.

Contract of a frontend module::

    EXTRA: str  # the pip extra that installs its dependencies, e.g. "paddle"

    def export_zoo_entry(entry: ZooEntry, model_file: Path, output: Path) -> None:
        '''Write the ONNX model for the fetched zoo model ``model_file`` to ``output``.'''

``output`` is a temporary path; :func:`convert_zoo_entry` renames it into the cache only when the
export returns, so a failed or interrupted conversion never leaves a half-written model behind.
"""

from __future__ import annotations

import importlib
from importlib.util import find_spec
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from ocrquant.errors import OcrQuantError, missing_extra
from ocrquant.fileio import atomic_path

if TYPE_CHECKING:
    from ocrquant.zoo.registry import ZooEntry

__all__ = [
    "FRONTENDS",
    "convert_zoo_entry",
    "converted_path",
    "get_frontend",
    "missing_extra",
    "require_frontend",
]

FRONTENDS: dict[str, str] = {
    "paddle": "ocrquant.frontends.paddle",
    "torch": "ocrquant.frontends.torch",
}

#: the modules a frontend imports, checked before any download (a 15 MB wheel fetched only to learn
#: that the extra is missing is the wrong order)
FRONTEND_MODULES: dict[str, tuple[str, ...]] = {"paddle": ("paddle", "paddle2onnx"), "torch": ("torch",)}

CONVERTED_NAME = "model.onnx"  # the cached conversion, beside the zoo entry's framework file


def get_frontend(framework: str) -> ModuleType:
    """The frontend module for ``framework`` (imported now)."""
    if framework not in FRONTENDS:
        known = ", ".join(sorted(FRONTENDS))
        raise OcrQuantError(f"no frontend for framework '{framework}' (known: {known})")
    return importlib.import_module(FRONTENDS[framework])


def require_frontend(framework: str, what: str) -> None:
    """Raise the missing-extra error when ``framework``'s modules are not installed (without importing
    them: paddle takes seconds to import)."""

    for module in FRONTEND_MODULES.get(framework, ()):
        if find_spec(module) is None:
            raise OcrQuantError(
                f"{what} needs the optional extra ({module} not found): pip install 'ocrquant[{framework}]'"
            )


def converted_path(model_file: Path) -> Path:
    """Where the ONNX conversion of a fetched zoo model is cached."""
    return Path(model_file).parent / CONVERTED_NAME


def convert_zoo_entry(entry: ZooEntry, model_file: Path) -> Path:
    """Convert a fetched non-ONNX zoo model once and return the cached ONNX file.

    The cache is reused while it is newer than the framework file it came from (a re-fetch
    invalidates it).
    """
    model_file = Path(model_file)
    out = converted_path(model_file)
    if out.is_file() and out.stat().st_mtime >= model_file.stat().st_mtime:
        return out
    frontend = get_frontend(entry.framework)
    with atomic_path(out) as tmp:
        frontend.export_zoo_entry(entry, model_file, tmp)
    return out
