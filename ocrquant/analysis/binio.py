"""Raw binary tensors for hardware bring-up: C-order, little-endian, no header (what a firmware
test harness memcpy's). The shape and dtype travel beside the file, so a size check is the only
protection against a wrong file and is always made."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ocrquant.errors import OcrQuantError
from ocrquant.fileio import atomic_path, write_bytes_atomic

DTYPES = ("float32", "float16", "int8", "uint8", "int16", "int32", "int64")


def _dtype(name: str) -> np.dtype:
    if name not in DTYPES:
        raise OcrQuantError(f"unsupported dtype '{name}' ({', '.join(DTYPES)})")
    return np.dtype(name).newbyteorder("<")


def read_bin(path: str | Path, shape: list[int] | tuple[int, ...], dtype: str = "float32") -> np.ndarray:
    """Read a raw tensor; a file of the wrong size is an error stating expected and actual bytes."""
    path = Path(path)
    if not path.is_file():
        raise OcrQuantError("binary file not found", path)
    if any(int(d) <= 0 for d in shape):
        raise OcrQuantError(f"shape must be positive, got {list(shape)}")
    dt = _dtype(dtype)
    expected = int(np.prod(shape)) * dt.itemsize
    actual = path.stat().st_size
    if actual != expected:
        raise OcrQuantError(
            f"wrong size: shape {list(shape)} {dtype} needs {expected} bytes, the file has {actual} bytes",
            path,
        )
    return np.fromfile(path, dtype=dt).reshape(shape).astype(dt.newbyteorder("="))


def write_bin(path: str | Path, array: np.ndarray, dtype: str | None = None) -> Path:
    """Write ``array`` raw (converted to ``dtype`` if given), atomically."""
    arr = np.asarray(array)
    dt = _dtype(dtype or arr.dtype.name)
    write_bytes_atomic(path, np.ascontiguousarray(arr.astype(dt)).tobytes())
    return Path(path)


def npy2bin(npy: str | Path, out: str | Path, dtype: str | None = None) -> tuple[list[int], str]:
    npy = Path(npy)
    if not npy.is_file():
        raise OcrQuantError("file not found", npy)
    try:
        arr = np.load(npy, allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/OSError on a bad file
        raise OcrQuantError(f"not a readable .npy file: {str(exc)[:200]}", npy) from None
    write_bin(out, arr, dtype)
    return list(arr.shape), dtype or arr.dtype.name


def bin2npy(path: str | Path, out: str | Path, shape: list[int], dtype: str = "float32") -> np.ndarray:
    arr = read_bin(path, shape, dtype)
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr)
    return arr
