"""A zoo OCR chain on ICDAR2015: FP32 vs ocrquant's default INT8, accuracy, speed and the chain.

What it does, in order (every step's result is saved under ``--out`` and reused when run again):

1. ``ocrquant quantize`` with its defaults on the chain's det (calibrated on det_train), cls and rec
   (rec_train), timed; the recipe it picked is read from the sidecar.
2. FP32 and INT8 on the test sets (det_test 500 images, rec_test 2077 crops, cls on those crops at
   0 and 180 degrees) with the models' own presets; each delta with its paired 95 % bootstrap interval.
3. ``ocrquant bench`` of FP32 and INT8 interleaved in one loop (onnxruntime, 2 threads, spinning off):
   det at the size a 1280x720 ICDAR2015 frame gets under the model's preset (v6 736x1312, v3
   544x960), rec at 48x320, batch 1 and 8.
4. The det -> cls -> rec chain on det_test (no lexicon), all FP32 and all INT8 (``--no-e2e`` skips it).
5. ``summary.json`` in ``--out``: the host, every figure printed, the commands; ``benchmarks/results.py``
   turns it into ``docs/results.md``.

  python benchmarks/icdar2015.py --chain v6 [--shared ../shared/data/icdar2015] [--out runs/v6]

A det/cls/rec INT8 model already in ``--out`` (``det.int8.onnx``...) is used as it is, with the recipe
its sidecar records, so a model made with other options is scored the same way.
The host's CPU and its int8 instruction sets are printed first: the INT8 speed-up depends on them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import onnx

from ocrquant.analysis.bench import run_bench
from ocrquant.api import build_task, eval_model
from ocrquant.data import open_dataset
from ocrquant.errors import OcrQuantError, run_script
from ocrquant.evaluation.evaluate import EvalResult, cached_result
from ocrquant.evaluation.significance import paired_delta_interval, paired_mean_interval
from ocrquant.fileio import atomic_path, read_sidecar, write_json_atomic
from ocrquant.pipeline.evaluate import ChainSpec, E2EScoring, eval_e2e
from ocrquant.quantization.prepare import flush_denormal_weights
from ocrquant.quantization.targets import cpu_has_vnni
from ocrquant.report.table import machine_description
from ocrquant.runtime import RuntimeOptions
from ocrquant.zoo.resolve import resolve_model

CHAINS = {
    "v6": {"det": "ppocrv6-small-det", "cls": "ppocrv6-cls", "rec": "ppocrv6-small-rec"},
    "v3": {"det": "ppocrv3-det", "cls": "ppocrv3-cls", "rec": "ppocrv3-rec"},
}
DET_SHAPE = {"v6": "736x1312", "v3": "544x960"}
CALIB = {"det": "det_train", "cls": "rec_train", "rec": "rec_train"}
TEST = {"det": "det_test", "cls": "rec_test", "rec": "rec_test"}
SHOWN = {"det": ("precision", "recall", "hmean"), "cls": ("acc",), "rec": ("acc", "norm_edit_sim")}
BENCH_SHAPES = {"cls": ["48x192 b1", "48x192 b8"], "rec": ["48x320 b1", "48x320 b8"]}


def bench_shapes(chain: str, task: str) -> list[str]:
    """The inputs a task of a chain is timed at (``ocrquant bench`` shape names)."""
    return [DET_SHAPE[chain]] if task == "det" else BENCH_SHAPES[task]


def quantized(model: str, task: str, shared: Path, out: Path, target: str | None = None) -> tuple[Path, dict]:
    """The default INT8 model for ``task``, made by the ``ocrquant quantize`` command itself (its
    defaults, the budget escalation included; ``--target target`` where given), and how:
    ``{"command", "seconds"}``, kept in ``<task>.quantize.json``. An INT8 model already in ``out`` is
    used as it is, with what that file says about it (nothing where it was made some other way)."""
    path = out / f"{task}.int8.onnx"
    timing = out / f"{task}.quantize.json"
    if path.is_file() and read_sidecar(path):
        made = json.loads(timing.read_text()) if timing.is_file() else {}
        return path, {"command": made.get("command"), "seconds": made.get("seconds")}
    cmd = [sys.executable, "-m", "ocrquant.cli.main", "quantize", "-m", model, "--calib-data",
           str(shared / CALIB[task]), "-o", str(path), *(["--target", target] if target else [])]  # fmt: skip
    t = time.perf_counter()
    with open(out / f"{task}.quantize.log", "w", encoding="utf-8") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise OcrQuantError(f"ocrquant quantize failed (exit {proc.returncode}); see its log", log.name)
    made = {"command": " ".join(["ocrquant", *cmd[3:]]), "seconds": time.perf_counter() - t}
    write_json_atomic(timing, made)
    return path, made


def flushed_float(model: str, out: Path) -> Path | None:
    """The float model with its denormal weights zeroed (as ``prepare_model`` zeroes them), written to
    ``out``, where it has any; None otherwise. On an Intel core every multiply with a denormal weight
    takes a microcode assist (PP-OCRv6 small det FP32 runs 2.89x faster without them: ``python
    benchmarks/denormals.py``), so INT8's speed-up over the file as shipped is not INT8's alone: the
    bench times this copy too and reports the speed-up over it beside the other."""
    proto = onnx.load(str(resolve_model(model).path))
    if not flush_denormal_weights(proto):
        return None
    path = out / f"{model}.fp32-flushed.onnx"
    if not path.is_file():
        with atomic_path(path) as tmp:
            onnx.save(proto, str(tmp))
    return path


def evaluated(model: str | Path, task: str, shared: Path, path: Path) -> EvalResult:
    return cached_result(
        path,
        lambda: eval_model(
            model, shared / TEST[task], task=task, output=path, runtime=RuntimeOptions(threads=2)
        ),
    )


def accuracy(model: str, task: str, fp32: EvalResult, int8: EvalResult) -> list[dict]:
    """Each shown metric FP32 -> INT8; the primary one and 1-NED with their paired 95 % intervals."""
    metric = build_task(task, resolve_model(model)).new_metric()
    primary = paired_delta_interval(metric, fp32.samples, int8.samples)
    rows = []
    for name in SHOWN[task]:
        ci = primary if name == fp32.settings.get("primary_metric", name) else None
        if name == "norm_edit_sim":
            ci = paired_mean_interval(fp32.samples, int8.samples, name)
        rows.append({"metric": name, "fp32": fp32.metrics[name], "int8": int8.metrics[name],
                     "low": ci["low"] if ci else None, "high": ci["high"] if ci else None})  # fmt: skip
    return rows


def print_accuracy(rows: list[dict]) -> None:
    for r in rows:
        interval = f"  95% [{100 * r['low']:+.2f}, {100 * r['high']:+.2f}]" if r["low"] is not None else ""
        delta = 100 * (r["int8"] - r["fp32"])
        print(f"  {r['metric']:14} {r['fp32']:.4f} -> {r['int8']:.4f}  {delta:+.2f} pt{interval}")


def task_summary(chain: str, task: str, args: argparse.Namespace) -> tuple[Path, dict]:
    """Quantize (or reuse), score and time one task; print it and return its figures."""
    model = CHAINS[chain][task]
    path, made = quantized(model, task, args.shared, args.out)
    seconds = made["seconds"]
    side = read_sidecar(path)
    recipe = {k: side["settings"].get(k) for k in ("method", "method_options", "algorithms")}
    took = f"{seconds / 60:.1f} min" if seconds is not None else "time not recorded"
    print(f"\n{task}: {model} INT8 ({took}): {json.dumps(recipe)}")
    counts = side.get("node_counts", {})
    float_ops = {op: counts.get(op, {}).get("float", 0) for op in ("Conv", "MatMul")}
    print("  float Conv/MatMul:", float_ops)
    fp32 = evaluated(model, task, args.shared, args.out / f"{task}.fp32.json")
    int8 = evaluated(path, task, args.shared, args.out / f"{task}.int8.json")
    print(f"  {TEST[task]} ({fp32.count} samples), FP32 -> INT8:")
    rows = accuracy(model, task, fp32, int8)
    print_accuracy(rows)
    shapes = bench_shapes(chain, task)
    flushed = flushed_float(model, args.out)
    models = [model, path] + ([flushed] if flushed else [])
    bench = run_bench(models, task, shapes=shapes, rounds=args.rounds, progress=False, memory=False)
    ours = [r for r in bench.rows if not (flushed and r.model.endswith(flushed.name))]
    flushed_ms = {r.shape: r.median_ms for r in bench.rows if r not in ours}
    speed = []
    for row in ours:
        entry = {"shape": row.shape, "precision": row.precision, "median_ms": row.median_ms,
                 "speedup": row.speedup_vs_baseline, "size_mb": row.size_mb}  # fmt: skip
        extra = ""
        if row.shape in flushed_ms and row.precision != "fp32":
            entry["speedup_vs_flushed"] = flushed_ms[row.shape] / row.median_ms
            extra = f", x{entry['speedup_vs_flushed']:.2f} vs FP32 with denormal weights zeroed"
        print(f"  bench {row.shape:10} {row.precision:5} median {row.median_ms:8.2f} ms  "
              f"x{row.speedup_vs_baseline:.2f} vs FP32{extra}")  # fmt: skip
        speed.append(entry)
    summary = {"model": model, "test": TEST[task], "samples": fp32.count, "recipe": recipe,
               "quantize_seconds": seconds, "quantize_command": made["command"],
               "float_conv_matmul": float_ops, "accuracy": rows,
               "bench": speed, "bench_rounds": args.rounds}  # fmt: skip
    return path, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/icdar2015"
    )
    ap.add_argument("--chain", choices=sorted(CHAINS), default="v6")
    ap.add_argument("--out", type=Path, default=None, help="default runs/<chain>")
    ap.add_argument("--tasks", nargs="+", default=["rec", "cls", "det"], choices=sorted(CALIB))
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--no-e2e", action="store_true", help="skip the det -> cls -> rec chain")
    args = ap.parse_args()
    args.out = args.out or Path("runs") / args.chain
    for folder in {*CALIB.values(), *TEST.values()}:
        open_dataset(args.shared / folder, "det" if folder.startswith("det") else "rec")  # fails early
    args.out.mkdir(parents=True, exist_ok=True)
    host = machine_description()
    print(f"host: {host} | VNNI/AMX int8 dot product: {cpu_has_vnni()}")
    summary: dict = {"host": host, "chain": args.chain, "command": " ".join(["python", *sys.argv]),
                     "threads": 2, "load_average": [os.getloadavg()[0]], "tasks": {}}  # fmt: skip
    int8_paths: dict[str, Path] = {}
    for task in args.tasks:
        int8_paths[task], summary["tasks"][task] = task_summary(args.chain, task, args)
    models = CHAINS[args.chain]
    if not args.no_e2e and set(int8_paths) == set(models):
        print(f"\nend to end on det_test (no lexicon), {' + '.join(models.values())}:")
        summary["e2e"] = {}
        for label, chain in (("fp32", models), ("int8", int8_paths)):
            res = eval_e2e(
                args.shared / "det_test", ChainSpec(chain["det"], chain["cls"], chain["rec"]),
                E2EScoring(lexicon="none", progress=False), output=args.out / f"e2e.{label}.json",
                runtime=RuntimeOptions(threads=2),
            )  # fmt: skip
            summary["e2e"][label] = res.metrics
            print(f"  {label:14} {json.dumps(res.metrics)}")
    summary["load_average"].append(os.getloadavg()[0])  # other work on the CPU, at start and end
    write_json_atomic(args.out / "summary.json", summary)
    print(f"\nwrote {args.out / 'summary.json'}")


if __name__ == "__main__":
    run_script(main)
