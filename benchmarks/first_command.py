"""Time the README's first command as a new user meets it: a fresh clone of this checkout's HEAD, the
first line of the README's first ``bash`` block run there as written (venv, install, ``ocrquant run``).

  python benchmarks/first_command.py [--out runs/first-command] [--keep]

Writes OUT/first_command.json (host, the command, seconds, whether the model cache was already
filled, the run's report.json), read by ``benchmarks/results.py``. The model cache
(``$OCRQUANT_HOME``, default ``~/.cache/ocrquant``) is the user's; a filled cache skips the wheel
downloads, which the JSON records. The clone is removed afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ocrquant.errors import OcrQuantError, run_script
from ocrquant.fileio import write_json_atomic
from ocrquant.report.table import machine_description
from ocrquant.zoo.fetch import cache_home

REPO = Path(__file__).resolve().parents[1]


def first_command(readme: Path) -> str:
    """The first line of the README's first ```bash block."""
    match = re.search(r"```bash\n(.+?)\n", readme.read_text(encoding="utf-8"))
    if not match:
        raise OcrQuantError("no ```bash block", readme)
    return match.group(1).strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/first-command"))
    ap.add_argument("--keep", action="store_true", help="keep the clone")
    args = ap.parse_args()
    command = first_command(REPO / "README.md")
    cache_filled = (cache_home() / "models").is_dir() and any((cache_home() / "models").iterdir())
    clone = Path(tempfile.mkdtemp(prefix="ocrquant-first-"))
    try:
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone / "ocrquant")], check=True)
        print(f"$ {command}   (in {clone / 'ocrquant'})", flush=True)
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        load = [os.getloadavg()[0]]  # other work on the CPU, at start and end
        start = time.perf_counter()
        subprocess.run(["bash", "-c", command], cwd=clone / "ocrquant", env=env, check=True)
        seconds = time.perf_counter() - start
        load.append(os.getloadavg()[0])
        report = (clone / "ocrquant" / "runs/latest/report.json").read_text(encoding="utf-8")
    finally:
        if not args.keep:
            shutil.rmtree(clone, ignore_errors=True)
    extras = re.search(r'-e "\.\[([^\]]*)\]"', command)
    write_json_atomic(
        args.out / "first_command.json",
        {
            "command": "python benchmarks/first_command.py",
            "timed": command,
            "host": machine_description(),
            "seconds": seconds,
            "load_average": load,
            "cache_filled": cache_filled,
            "extras": extras.group(1) if extras else "none",
            "report": json.loads(report),
        },  # fmt: skip
    )
    print(f"{seconds / 60:.1f} minutes; wrote {args.out / 'first_command.json'}")


if __name__ == "__main__":
    run_script(main)
