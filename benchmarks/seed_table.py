"""The vendor workflow ocrquant replaces, translated to ocrquant's CLI and run as written.

The workflow (one command per model): a fixed input shape, a calibration count and batch, a range
method, then float and quantized inference on the test set, a layer dump, an integer simulation
compared with the quantized output, and a profile. Its own table (Paddle float | ONNX float |
quantized, ICDAR2015): det 0.411 -> 0.415 (500 images), cls 0.699 -> 0.699 (30), rec 0.655 -> 0.649
(2077). Here each workflow is one ``ocrquant run`` with the ``npu-pow2`` target (power-of-two scales,
symmetric int8: what integer NPUs take), every layer INT8 (``--keep-all-int8``: an NPU has no float
fallback), on the Paddle models the zoo has (PP-OCRv4 det / rec, v2 cls; ``--framework paddle`` also
scores Paddle itself) and on PP-OCRv3 (ONNX only):

  det  1x3x512x896, 50 calibration images, calibration batch 1, kl,  test batch 1, 500 images
  cls  -1x3x48x192, 10 calibration images, the target's method,     30 test crops
  rec  -1x3x48x320, 300 calibration images, calibration batch 16, min_max, test batch 16, 2077 crops
       (the vendor writes 1x3x48x320 and also batch 16, which a batch-1 model cannot take; -1 keeps the
       batch dynamic, the size fixed)

The Paddle models' det (kl), cls and rec workflows also run with ``--target ort-cpu``
(onnxruntime's CPU format: uint8 asymmetric activations, per-channel weights, float scales), which
separates what the integer format costs from what the workflow costs. Each det model also gets a
row with ``--method auto`` (chosen on det_train images that calibration
did not use, never the test set) and its float hmean at its native size (``ocrquant eval``), which
says what the 512x896 resize costs. After each run: the integer simulator against onnxruntime on the
INT8 model (cosine at the model output, ``ocrquant simulate --compare``: with onnxruntime's rounding,
ties to even, which reproduces it, and with ties away from zero, which many NPUs use) and the
profile's three slowest INT8 nodes (``ocrquant profile``).

Run (resumable: ``ocrquant run`` keeps what a run folder already holds):
  python benchmarks/seed_table.py --data ../shared/data/icdar2015 --out runs/seed
Writes OUT/seed_table.md and OUT/seed_table.json (the host, the command, a row per workflow; read by
``benchmarks/results.py``) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ocrquant.fileio import write_text_atomic
from ocrquant.report.table import machine_description
from ocrquant.workflow import DATA_KIND

#: the vendor's own figures: Paddle float, ONNX float, quantized, test size
SEED = {
    "det": (0.411, 0.411, 0.415, 500),
    "cls": (0.699, 0.699, 0.699, 30),
    "rec": (0.655, 0.655, 0.649, 2077),
}
DATA = {"det": ("det_test", "det_train"), "cls": ("rec_test", "rec_train"), "rec": ("rec_test", "rec_train")}


@dataclass(frozen=True)
class Workflow:
    """One vendor workflow on one model, as ``ocrquant run`` options."""

    task: str
    model: str
    shape: tuple[int, int, int, int]
    calib_size: int
    calib_batch: int
    method: str | None
    batch: int
    test_size: int  # 0: the whole test set
    framework: str | None
    target: str = "npu-pow2"

    @property
    def name(self) -> str:
        suffix = "" if self.target == "npu-pow2" else f"-{self.target}"
        return f"{self.model}-{self.method or 'default'}{suffix}"

    def command(self, data: Path, out: Path) -> list[str]:
        test, calib = DATA[self.task]
        cmd = [
            "ocrquant", "run", "--task", self.task, "-m", f"{self.task}={self.model}",
            "--data", f"{DATA_KIND[self.task]}={data / test}",
            "--calib-data", f"{DATA_KIND[self.task]}={data / calib}",
            "--input-shape", *map(str, self.shape), "--calib-size", str(self.calib_size),
            "--calib-batch-size", str(self.calib_batch), "--batch-size", str(self.batch),
            "--target", self.target, "--keep-all-int8", "-o", str(out / self.name),
        ]  # fmt: skip
        if self.method:
            cmd += ["--method", self.method]
        if self.test_size:
            cmd += ["--limit", str(self.test_size)]
        if self.framework:
            cmd += ["--framework", self.framework]
        return cmd


def workflows() -> list[Workflow]:
    """The three vendor workflows on PP-OCRv4 / v2 (Paddle) and PP-OCRv3, plus ``auto`` for det."""
    rows = []
    for det, cls, rec, fw in (
        ("ppocrv4-det", "ppocrv2-cls-paddle", "ppocrv4-rec", "paddle"),
        ("ppocrv3-det", "ppocrv3-cls", "ppocrv3-rec", None),
    ):
        rows += [
            Workflow("det", det, (1, 3, 512, 896), 50, 1, "kl", 1, 0, fw),
            Workflow("det", det, (1, 3, 512, 896), 50, 1, "auto", 1, 0, fw),
            Workflow("cls", cls, (-1, 3, 48, 192), 10, 8, None, 1, 30, fw),
            Workflow("rec", rec, (-1, 3, 48, 320), 300, 16, "min_max", 16, 0, fw),
        ]
    # the same workflows on the Paddle models with onnxruntime's CPU format (uint8 asymmetric
    # activations, per-channel weights, float scales): what the format, not the workflow, costs
    rows += [replace(w, target="ort-cpu") for w in rows[:4] if w.method != "auto"]
    return rows


def _ocrquant() -> str:
    """The CLI installed beside this interpreter (the one the README's set-up made)."""
    beside = Path(sys.executable).with_name("ocrquant")
    return str(beside) if beside.is_file() else "ocrquant"


def run_workflow(wf: Workflow, data: Path, out: Path) -> dict:
    """``ocrquant run`` for one workflow (resumed where its folder has results); its report row."""
    cmd = wf.command(data, out)
    print("$", shlex.join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run([_ocrquant(), *cmd[1:]], check=True)
    row = json.loads((out / wf.name / "report.json").read_text())["rows"][0]
    row["wall_s"] = round(time.perf_counter() - start, 1)
    return row


def native_float(wf: Workflow, data: Path, out: Path) -> float:
    """det: the float model's hmean at its own preprocessing size (``ocrquant eval``), cached."""
    target = out / f"{wf.model}-native.json"
    if not target.is_file():
        cmd = [_ocrquant(), "eval", "-m", wf.model, "-d", str(data / "det_test"), "--task", "det"]
        cmd += ["-o", str(target)]
        print("$", shlex.join(["ocrquant", *cmd[1:]]), flush=True)
        subprocess.run(cmd, check=True)
    result = json.loads(target.read_text())
    return float(result["metrics"][result["settings"]["primary_metric"]])


def analysis(wf: Workflow, row: dict, data: Path) -> dict:
    """Simulator vs onnxruntime cosine at each output, and the three slowest INT8 nodes."""
    from ocrquant.analysis.inputs import load_inputs
    from ocrquant.analysis.profile import profile_model
    from ocrquant.analysis.simulate.agreement import compare_with_runtime

    int8 = Path(row["details"]["int8 model"])
    n = 1 if wf.task == "det" else 4  # the simulator runs each integer kernel in numpy
    shape = wf.shape if wf.shape[0] > 0 else (1, *wf.shape[1:])
    _, arrays = load_inputs(int8, data / DATA[wf.task][0], wf.task, n, input_shape=shape)
    cosine = {}
    for rounding in ("half_even", "half_away"):
        agreement, _ = compare_with_runtime(int8, arrays, rounding=rounding, progress=False)
        cosine[rounding] = min(a.cosine for a in agreement if a.runtime == "ort-reference")
    prof = profile_model(int8, arrays, threads=2)
    top = sorted(prof.nodes, key=lambda t: -t.share)[:3]
    return {
        "sim_cosine": cosine["half_even"],
        "sim_cosine_half_away": cosine["half_away"],
        "profile_top": [f"{t.name} ({t.op_type}, {t.share:.0%})" for t in top],
    }


def markdown(results: list[dict]) -> str:
    """The table beside the vendor's own figures."""
    head = (
        "| task | model | target | method | Paddle float | ONNX float | INT8 | delta (95% CI) | N | "
        "float ms/img | "
        "INT8 ms/img | sim = ORT (cosine) | sim, half-away rounding | slowest INT8 nodes | "
        "vendor (Paddle / ONNX / quantized, N) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in results:
        fw = "-" if r["framework_metric"] is None else f"{r['framework_metric']:.4f}"
        ci = r.get("delta_interval") or {"low": float("nan"), "high": float("nan")}
        native = f" (native size {r['native_float']:.4f})" if "native_float" in r else ""
        seed = SEED[r["task_kind"]]
        lines.append(
            f"| {r['task_kind']} | {r['model']} | {r.get('target', 'npu-pow2')} | {r['method']} | {fw} | "
            f"{r['float_metric']:.4f}{native} | "
            f"{r['int8_metric']:.4f} | {100 * r['delta']:+.2f} "
            f"({100 * ci['low']:+.2f}, {100 * ci['high']:+.2f}) | "
            f"{r['test_size']} | {r['float_ms']:.1f} | {r['int8_ms']:.1f} | "
            f"{r['sim_cosine']:.4f} | {r['sim_cosine_half_away']:.4f} | "
            f"{'; '.join(r['profile_top'])} | {seed[0]} / {seed[1]} / {seed[2]}, {seed[3]} |"
        )
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/icdar2015"))
    parser.add_argument("--out", type=Path, default=Path("runs/seed"))
    parser.add_argument("--only", action="append", help="Run only these tasks (det, cls, rec).")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    host, command = machine_description(), shlex.join(["python", *sys.argv])
    results = []
    for wf in workflows():
        if args.only and wf.task not in args.only:
            continue
        row = run_workflow(wf, args.data, args.out)
        row.update(
            task_kind=wf.task, method=wf.method or "default", target=wf.target, input_shape=list(wf.shape)
        )
        row.update(analysis(wf, row, args.data))
        if wf.task == "det" and wf.method == "kl":
            row["native_float"] = native_float(wf, args.data, args.out)
        results.append(row)
        table = markdown(results)
        summary = {"host": host, "command": command, "rows": results}
        write_text_atomic(args.out / "seed_table.json", json.dumps(summary, indent=1, default=str))
        write_text_atomic(args.out / "seed_table.md", table)
    print(table)


if __name__ == "__main__":
    main()
