"""PP-OCRv6 small on ICDAR2015: FP32 vs ocrquant's default INT8, accuracy, speed and the OCR chain.

What it does, in order (every step's result is saved under ``--out`` and reused when run again):

1. ``ocrquant quantize`` with its defaults on ``ppocrv6-small-det`` (calibrated on det_train),
   ``ppocrv6-cls`` and ``ppocrv6-small-rec`` (rec_train), timed; the recipe it picked is read from
   the sidecar.
2. FP32 and INT8 on the test sets (det_test 500 images, rec_test 2077 crops, cls on those crops at
   0 and 180 degrees) with the models' own presets; each delta with its paired 95 % bootstrap interval.
3. ``ocrquant bench`` of FP32 and INT8 interleaved in one loop (onnxruntime, 2 threads, spinning off):
   det at 736x1312 (a 1280x720 image under the v6 preset), rec at 48x320, batch 1 and 8.
4. The det -> cls -> rec chain on det_test (no lexicon), all FP32 and all INT8 (``--no-e2e`` skips it).

  python benchmarks/ppocrv6.py [--shared ../shared/data/icdar2015] [--out runs/ppocrv6]

The host's CPU and its int8 instruction sets are printed first: the INT8 speed-up depends on them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from ocrquant.api import build_task, eval_model
from ocrquant.data import open_dataset
from ocrquant.errors import OcrQuantError, run_script
from ocrquant.evaluation.evaluate import EvalResult, cached_result
from ocrquant.evaluation.significance import paired_delta_interval, paired_mean_interval
from ocrquant.fileio import read_sidecar
from ocrquant.quantization.targets import cpu_has_vnni
from ocrquant.report.table import machine_description
from ocrquant.runtime import RuntimeOptions
from ocrquant.runtime.bench import run_bench
from ocrquant.zoo.resolve import resolve_model

MODELS = {"det": "ppocrv6-small-det", "cls": "ppocrv6-cls", "rec": "ppocrv6-small-rec"}
CALIB = {"det": "det_train", "cls": "rec_train", "rec": "rec_train"}
TEST = {"det": "det_test", "cls": "rec_test", "rec": "rec_test"}
SHOWN = {"det": ("precision", "recall", "hmean"), "cls": ("acc",), "rec": ("acc", "norm_edit_sim")}
BENCH_SHAPES = {"det": ["736x1312"], "cls": ["48x192 b1"], "rec": ["48x320 b1", "48x320 b8"]}


def quantized(task: str, shared: Path, out: Path) -> tuple[Path, float | None]:
    """The default INT8 model for ``task``, made by the ``ocrquant quantize`` command itself (its
    defaults, the budget escalation included), and the seconds it took (None: reused from ``out``)."""
    path = out / f"{task}.int8.onnx"
    if path.is_file() and read_sidecar(path):
        return path, None
    cmd = [sys.executable, "-m", "ocrquant.cli.main", "quantize", "-m", MODELS[task], "--calib-data",
           str(shared / CALIB[task]), "-o", str(path)]  # fmt: skip
    t = time.perf_counter()
    with open(out / f"{task}.quantize.log", "w", encoding="utf-8") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise OcrQuantError(f"ocrquant quantize failed (exit {proc.returncode}); see its log", log.name)
    return path, time.perf_counter() - t


def evaluated(model: str | Path, task: str, shared: Path, path: Path) -> EvalResult:
    return cached_result(
        path,
        lambda: eval_model(
            model, shared / TEST[task], task=task, output=path, runtime=RuntimeOptions(threads=2)
        ),
    )


def accuracy_rows(task: str, fp32: EvalResult, int8: EvalResult) -> list[str]:
    metric = build_task(task, resolve_model(MODELS[task])).new_metric()
    ci = paired_delta_interval(metric, fp32.samples, int8.samples)
    rows = []
    for name in SHOWN[task]:
        a, b = fp32.metrics[name], int8.metrics[name]
        interval = ""
        ci_name = ci if name == fp32.settings.get("primary_metric", name) else None
        if name == "norm_edit_sim":
            ci_name = paired_mean_interval(fp32.samples, int8.samples, name)
        if ci_name:
            interval = f"  95% [{100 * ci_name['low']:+.2f}, {100 * ci_name['high']:+.2f}]"
        rows.append(f"  {name:14} {a:.4f} -> {b:.4f}  {100 * (b - a):+.2f} pt{interval}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/icdar2015"
    )
    ap.add_argument("--out", type=Path, default=Path("runs/ppocrv6"))
    ap.add_argument("--tasks", nargs="+", default=["rec", "cls", "det"], choices=sorted(MODELS))
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--no-e2e", action="store_true", help="skip the det -> cls -> rec chain")
    args = ap.parse_args()
    for folder in {*CALIB.values(), *TEST.values()}:
        open_dataset(args.shared / folder, "det" if folder.startswith("det") else "rec")  # fails early
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"host: {machine_description()} | VNNI/AMX int8 dot product: {cpu_has_vnni()}")
    int8_paths: dict[str, Path] = {}
    for task in args.tasks:
        path, seconds = quantized(task, args.shared, args.out)
        int8_paths[task] = path
        side = read_sidecar(path)
        recipe = {k: side["settings"].get(k) for k in ("method", "method_options", "algorithms")}
        took = f"{seconds / 60:.1f} min" if seconds is not None else "reused"
        print(f"\n{task}: ocrquant quantize defaults ({took}): {json.dumps(recipe)}")
        counts = side.get("node_counts", {})
        print("  float Conv/MatMul:", {op: counts.get(op, {}).get("float", 0) for op in ("Conv", "MatMul")})
        fp32 = evaluated(MODELS[task], task, args.shared, args.out / f"{task}.fp32.json")
        int8 = evaluated(path, task, args.shared, args.out / f"{task}.int8.json")
        print(f"  {TEST[task]} ({fp32.count} samples), FP32 -> INT8:")
        print("\n".join(accuracy_rows(task, fp32, int8)))
        bench = run_bench(
            [MODELS[task], path], task, shapes=BENCH_SHAPES[task], rounds=args.rounds, progress=False,
            memory=False,
        )  # fmt: skip
        for row in bench.rows:
            print(
                f"  bench {row.shape:10} {row.precision:5} median {row.median_ms:8.2f} ms  "
                f"x{row.speedup_vs_baseline:.2f} vs FP32"
            )
    if not args.no_e2e and set(int8_paths) == set(MODELS):
        from ocrquant.pipeline.evaluate import eval_e2e

        print("\nend to end on det_test (no lexicon), ppocrv6-small det + ppocrv6-cls + rec:")
        for label, chain in (("fp32", MODELS), ("int8", int8_paths)):
            res = eval_e2e(
                args.shared / "det_test", det=chain["det"], cls=chain["cls"], rec=chain["rec"],
                lexicon="none",
                output=args.out / f"e2e.{label.replace('+', '-').replace(' ', '-')}.json",
                runtime=RuntimeOptions(threads=2), progress=False,
            )  # fmt: skip
            print(f"  {label:14} {json.dumps(res.metrics)}")


if __name__ == "__main__":
    run_script(main)
