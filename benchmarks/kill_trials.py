"""``kill -9`` at random points of ``eval``, ``quantize`` and ``run``; then the same command to the end.

Run: python benchmarks/kill_trials.py --trials 20            (about 15 minutes on 2 cores)

Each command first runs once uninterrupted (the reference). Then, per trial, it starts in its own
output folder, is killed with SIGKILL after a uniformly random fraction of the reference's wall time
(the process gets no chance to clean up), and runs again to completion in the same folder (a resume
where the command supports one). A trial passes when:

* the final result equals the reference: eval's metric and every per-sample prediction; quantize's
  model bytes; run's report rows (metrics and the INT8 model's bytes);
* no half pair: every ``.onnx`` ocrquant wrote has a ``.quant.json`` whose recorded model sha256 is
  the file's (or none at all where the command writes none);
* nothing left over: no ``ocrquant-*`` scratch folder in the trial's private temp folder, no ``.tmp``
  file beside the outputs.

It prints one line per trial and a summary per command; exit 1 if any trial failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _commands(test: Path, calib: Path) -> dict[str, list[str]]:
    """Jobs of a few seconds past the ~1.5 s start-up, so that most kills land mid-work."""
    return {
        "eval": ["eval", "-m", "ppocrv3-rec", "-d", str(test), "-o", "{o}/result.json", "--threads", "1"],
        "quantize": [
            "quantize", "-m", "ppocrv3-cls", "--calib-data", str(calib), "-o", "{o}/cls.int8.onnx",
            "--method", "min_max", "--calib-size", "200", "--no-cache",
        ],
        "run": [
            "run", "--task", "cls", "-m", "ppocrv3-cls", "--data", str(test), "--calib-data", str(calib),
            "--method", "min_max", "--calib-size", "200", "--latency-inputs", "2", "--out", "{o}/run",
        ],
    }  # fmt: skip


TIMING_KEYS = {"float_ms", "int8_ms", "speedup"}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _outcome(kind: str, out: Path) -> object:
    """What must equal the reference (timings and paths excluded)."""
    if kind == "eval":
        res = json.loads((out / "result.json").read_text())
        return res["metrics"], [(s["key"], s.get("prediction")) for s in res["samples"]]
    if kind == "quantize":
        return _sha(out / "cls.int8.onnx")
    # the run folder's own path appears in the report; timings differ from run to run
    report = json.loads((out / "run" / "report.json").read_text().replace(str(out), "OUT"))
    rows = [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in report["rows"]]
    models = sorted(_sha(p) for p in (out / "run").rglob("*.int8.onnx"))
    return rows, models


def _leftovers(out: Path, tmp: Path) -> list[str]:
    """Half pairs, stray temporary files and scratch folders."""
    problems = [f"scratch folder {p.name}" for p in tmp.glob("ocrquant-*")]
    problems += [f"temporary file {p}" for p in out.rglob("*.tmp")]
    for model in out.rglob("*.onnx"):
        side = model.with_name(model.stem + ".quant.json")
        if side.exists():
            recorded = json.loads(side.read_text()).get("model_sha256")
            if recorded != _sha(model):
                problems.append(f"half pair {model.name} / {side.name}")
    return problems


def _start(argv: list[str], out: Path, tmp: Path) -> subprocess.Popen:
    args = [a.replace("{o}", str(out)) for a in argv]
    env = {**os.environ, "TMPDIR": str(tmp)}
    return subprocess.Popen(
        [sys.executable, "-m", "ocrquant.cli.main", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


def _finish(argv: list[str], out: Path, tmp: Path) -> float:
    t0 = time.perf_counter()
    proc = _start(argv, out, tmp)
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {err.strip()[-400:]}")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--commands", default="eval,quantize,run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="kill-trials-"))
    failures = 0
    try:
        from ocrquant.data.synth import generate

        generate(work / "test", n_det=0, n_rec=300, seed=12)
        generate(work / "calib", n_det=0, n_rec=200, seed=11)
        commands = _commands(work / "test" / "rec", work / "calib" / "rec")
        for kind in args.commands.split(","):
            argv = commands[kind]
            ref_out, ref_tmp = work / f"{kind}-ref", work / f"{kind}-ref-tmp"
            ref_out.mkdir()
            ref_tmp.mkdir()
            wall = _finish(argv, ref_out, ref_tmp)
            reference = _outcome(kind, ref_out)
            print(f"{kind}: reference run {wall:.1f} s", flush=True)
            passed = 0
            for trial in range(args.trials):
                out, tmp = work / f"{kind}-{trial}", work / f"{kind}-{trial}-tmp"
                out.mkdir()
                tmp.mkdir()
                at = rng.uniform(0.05, 0.95) * wall
                proc = _start(argv, out, tmp)
                time.sleep(at)
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                _finish(argv, out, tmp)
                problems = _leftovers(out, tmp)
                if _outcome(kind, out) != reference:
                    problems.append("final result differs from the uninterrupted run")
                passed += not problems
                failures += bool(problems)
                print(f"  trial {trial:2d}: killed at {at:5.1f} s: {'; '.join(problems) or 'ok'}", flush=True)
            print(f"{kind}: {passed}/{args.trials} trials equal the uninterrupted run, nothing left over")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
