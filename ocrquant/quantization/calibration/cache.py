"""Calibration cache: statistics stored as ``<key-hash>.npz`` beside a ``<key-hash>.json`` key.

The key names everything the statistics depend on (model bytes, the calibration images, the task's
preprocessing settings, histogram bins), so a changed input can never reuse stale statistics, while
trying another range method or target reuses them without running the float model again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from ocrquant.fileio import atomic_path, sha256_file, write_json_atomic
from ocrquant.quantization.calibration.stats import CalibrationStats

log = logging.getLogger("ocrquant")

CACHE_VERSION = 2  # 2: the .json holds the key and the .npz's sha256


def cache_key(**parts: Any) -> dict[str, Any]:
    return {"version": CACHE_VERSION, **parts}


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


def load_cached(cache_dir: Path | None, key: dict[str, Any]) -> CalibrationStats | None:
    if cache_dir is None:
        return None
    stem = Path(cache_dir) / f"calib-{_digest(key)}"
    npz, meta = stem.with_suffix(".npz"), stem.with_suffix(".json")
    if not (npz.is_file() and meta.is_file()):
        return None
    try:
        recorded = json.loads(meta.read_text(encoding="utf-8"))
        if recorded.get("key") != json.loads(json.dumps(key, default=str)):
            return None
        if recorded.get("npz_sha256") != sha256_file(npz):  # damaged since written: loads, but wrong
            log.warning("ignoring damaged calibration cache %s (sha256 differs); recomputing", npz)
            return None
        stats = CalibrationStats.load(npz)
    except Exception as exc:  # a corrupt cache entry is recomputed, never fatal
        log.warning("ignoring unreadable calibration cache %s (%s)", npz, exc)
        return None
    log.info("calibration statistics loaded from cache %s", npz)
    return stats


def save_cached(cache_dir: Path | None, key: dict[str, Any], stats: CalibrationStats) -> Path | None:
    if cache_dir is None:
        return None
    stem = Path(cache_dir) / f"calib-{_digest(key)}"
    with atomic_path(stem.with_suffix(".npz")) as tmp:
        with open(tmp, "wb") as f:
            stats.save(f)
    npz = stem.with_suffix(".npz")
    write_json_atomic(stem.with_suffix(".json"), {"key": key, "npz_sha256": sha256_file(npz)})
    return stem.with_suffix(".npz")
