"""Atomic writes: an interrupted job never leaves a half-written output behind. Also the one place
that knows where a quantized model's ``.quant.json`` sidecar lives."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ocrquant.errors import OcrQuantError

_PID_TAG = re.compile(r"pid(\d+)-")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _remove_if_orphaned(path: Path) -> None:
    """Remove ``path`` (a scratch folder or temporary file named with ``pid<N>-``) when process N is
    gone: ``kill -9`` gives a process no chance to clean up, so the next run does it."""

    match = _PID_TAG.search(path.name)
    if match is None or _pid_alive(int(match.group(1))):
        return
    with contextlib.suppress(OSError):
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def scratch_dir(kind: str) -> tempfile.TemporaryDirectory:
    """A temporary folder for one step of a command, tagged with this process's id so that a later run
    can tell it was left behind by a killed process (:func:`sweep_orphans`)."""
    return tempfile.TemporaryDirectory(prefix=f"ocrquant-{kind}-pid{os.getpid()}-")


def sweep_orphans() -> None:
    """Remove scratch folders of ocrquant processes that no longer exist (run at every command's start;
    a listing of the temp folder)."""
    root = Path(tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for path in root.glob("ocrquant-*-pid*-*"):
            _remove_if_orphaned(path)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only if the block succeeds.
    Temporary files a killed process left beside ``target`` are removed first."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{glob.escape(target.name)}.pid*-*.tmp"):
        _remove_if_orphaned(stale)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.pid{os.getpid()}-", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600 files; give the output the mode a plain open() would have
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(target: str | Path, obj: Any) -> None:
    write_text_atomic(target, json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def write_bytes_atomic(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (model files can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a model file (of every file under it, for a model folder): a partial log written for
    another model at the same path (re-quantized with another method, replaced by a copy) must not be
    resumed. The 10.7 MB PP-OCRv3 rec model hashes in about 10 ms (2-core Zen 4)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []:
        h.update(f"{f.relative_to(path)}:{sha256_file(f)}".encode())
    return h.hexdigest()


def _json_default(obj: Any) -> Any:

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sidecar_path(model: str | Path) -> Path:
    """``<stem>.quant.json`` beside a quantized model: what ocrquant decided and measured for it."""
    model = Path(model)
    return model.with_name(model.stem + ".quant.json")


def float_reference_path(model: str | Path) -> Path:
    """``<stem>.float.onnx`` beside a quantized model: the float model the quantizer actually quantized
    (prepared, and rescaled by float-stage algorithms such as HS-CLE), the reference of every
    layer-wise comparison."""
    model = Path(model)
    return model.with_name(model.stem + ".float.onnx")


def copy_quantized(src: str | Path, dst: str | Path) -> None:
    """Copy a quantized model and what belongs to it (its float reference, then the model; the
    sidecar is the caller's, since it usually rewrites it), each atomically."""

    ref = float_reference_path(src)
    if ref.is_file():
        with atomic_path(float_reference_path(dst)) as tmp:
            shutil.copyfile(ref, tmp)
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def write_sidecar(model: str | Path, data: dict[str, Any]) -> Path:
    """Write ``model``'s sidecar (atomically) with the sha256 of the model file it describes: model and
    sidecar are two files, so a kill between their renames, or a model replaced later, would pair a
    model with another model's settings; :func:`read_sidecar` drops a sidecar whose digest differs."""
    side = sidecar_path(model)
    write_json_atomic(side, {**data, "model_sha256": sha256_file(model)})
    return side


def read_sidecar(model: str | Path) -> dict[str, Any]:
    """The model's sidecar as a dict; empty when there is none or when it describes another version of
    the model file (warned); a clear error naming it when corrupt."""
    side = sidecar_path(model)
    if not side.exists():
        return {}
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OcrQuantError(f"corrupt quantization sidecar (not JSON: {exc})", side) from None
    if not isinstance(data, dict):
        raise OcrQuantError("corrupt quantization sidecar (not a JSON object)", side)
    recorded = data.get("model_sha256")
    if recorded and Path(model).is_file() and recorded != sha256_file(model):
        logging.getLogger("ocrquant").warning(
            "ignoring %s: it describes another version of %s (model file changed since)", side, model
        )
        return {}
    return data


def check_output(
    target: str | Path,
    inputs: list[str | Path | None],
    *,
    folder: bool = False,
    datasets: list[str | Path | None] = (),
) -> None:
    """Refuse, before any work, an output that would destroy an input or cannot be written.

    The one output-path policy of every command: ``target`` (a file, or a ``folder`` the command
    fills) may not be one of ``inputs`` or ``datasets`` (same file, through links too), may not lie
    inside a dataset folder (its ``gt.txt`` would be replaced, or the output read back as a sample)
    nor, as a folder, contain one; a file output may not be an existing folder; the nearest existing
    parent must be a writable folder. Zoo names and other non-paths are ignored. A model folder is no
    dataset: converting ``model_dir/`` to ``model_dir/model.onnx`` is fine.
    """
    out = Path(target).expanduser()
    real = Path(os.path.realpath(out))
    for given in [*inputs, *datasets]:
        if given is not None and Path(given).exists() and real == Path(os.path.realpath(given)):
            raise OcrQuantError("output is also an input of this command; choose another path", out)
    for given in datasets:
        if given is None or not Path(given).is_dir():
            continue
        src = Path(os.path.realpath(given))
        if real.is_relative_to(src):
            raise OcrQuantError(
                f"output lies inside the input dataset {given}; choose a path outside it", out
            )
        if folder and src.is_relative_to(real):
            raise OcrQuantError(f"output folder contains the input dataset {given}; choose another", out)
    if out.exists() and not folder and out.is_dir():
        raise OcrQuantError("output is a directory; give a file name", out)
    if out.exists() and folder and not out.is_dir():
        raise OcrQuantError("output folder is an existing file", out)
    parent = out if folder and out.exists() else out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OcrQuantError(f"cannot write here: {parent} is a file, not a folder", out)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OcrQuantError(f"cannot write here: no write permission in {parent}", out)


MANIFEST_NAME = ".manifest.sha256.json"


def _manifest_names(folder: Path, names: Iterable[str] | None) -> list[str]:
    if names is not None:
        return sorted(names)
    return sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME
    )


def write_manifest(folder: str | Path, names: Iterable[str] | None = None) -> None:
    """Record the sha256 of ``names`` under ``folder`` (default: every file in it), for a cache entry
    ocrquant built or extracted itself."""
    folder = Path(folder)
    digests = {name: sha256_file(folder / name) for name in _manifest_names(folder, names)}
    write_json_atomic(folder / MANIFEST_NAME, digests)


def manifest_intact(folder: str | Path, names: Iterable[str] | None = None) -> bool:
    """True when the manifest of ``folder`` records exactly ``names`` (default: every file in it) and
    each file has the recorded sha256."""
    folder = Path(folder)
    try:
        recorded = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    expected = _manifest_names(folder, names)
    if not isinstance(recorded, dict) or sorted(recorded) != expected:
        return False
    return all((folder / n).is_file() and recorded[n] == sha256_file(folder / n) for n in expected)
