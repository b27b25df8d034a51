"""Does ocrquant's INT8 file score the same in OpenVINO as in onnxruntime, on the full test sets?

For each chain and task, the INT8 model ``benchmarks/icdar2015.py`` wrote into ``runs/<chain>/`` is
evaluated with the OpenVINO backend (plain ``openvino`` on the file as written, 2 threads, f32
precision hint) exactly as icdar2015.py evaluated it with onnxruntime (same test set, presets,
batch); the onnxruntime result is read from ``runs/<chain>/<task>.int8.json``. Printed per task: both
metrics, the delta with its paired 95 % bootstrap interval, and how many decisions differ (rec: the
text read; cls: the label; det: images where the number of boxes kept or matched differs).

How many decisions two *correct* executions of one QDQ file differ in is the yardstick: for rec and
cls the file also runs in onnxruntime with graph optimisation off (every Q/DQ computed in float, the
ONNX semantics themselves), and each runtime's integer kernels are compared with that reference.

  python benchmarks/openvino_accuracy.py [--chains v6 v3] [--shared ../shared/data/icdar2015]

Writes ``runs/openvino/accuracy.json`` (read by ``benchmarks/results.py``); each OpenVINO evaluation is
kept as ``runs/<chain>/<task>.int8.openvino.json`` and reused when run again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from icdar2015 import CHAINS, TEST

from ocrquant.api import build_task, eval_model
from ocrquant.errors import OcrQuantError, run_script
from ocrquant.evaluation.evaluate import EvalResult, cached_result
from ocrquant.evaluation.significance import paired_delta_interval
from ocrquant.fileio import write_json_atomic
from ocrquant.report.table import machine_description
from ocrquant.runtime import RuntimeOptions
from ocrquant.zoo.resolve import resolve_model


def decision_differs(task: str, a: dict, b: dict) -> bool:
    """Whether two evaluations of one sample differ in a decision the metric counts: rec the text
    read, cls the label, det the number of boxes kept or matched to the ground truth (a box whose
    corner moves by a pixel is not a different decision)."""
    if task == "rec":
        return a["prediction"]["text"] != b["prediction"]["text"]
    if task == "cls":
        return a["prediction"]["label"] != b["prediction"]["label"]
    fa, fb = a["figures"], b["figures"]
    return (fa["det_care"], fa["matched"]) != (fb["det_care"], fb["matched"])


def evaluated_on(
    model: Path, task: str, args: argparse.Namespace, backend: str, options: RuntimeOptions
) -> EvalResult:
    """The INT8 model on the task's full test set with ``backend``, kept beside it and reused."""
    suffix = backend if options.optimization == "all" else f"{backend}-{options.optimization}"
    path = model.with_name(f"{task}.int8.{suffix}.json")
    return cached_result(
        path,
        lambda: eval_model(model, args.shared / TEST[task], task=task, output=path, backend=backend,
                           runtime=options),
    )  # fmt: skip


def compare(chain: str, task: str, args: argparse.Namespace) -> dict:
    runs = args.runs / chain
    model = runs / f"{task}.int8.onnx"
    ort_file = runs / f"{task}.int8.json"
    if not (model.is_file() and ort_file.is_file()):
        hint = f"run python benchmarks/icdar2015.py --chain {chain}"
        raise OcrQuantError(f"no INT8 model or its onnxruntime result: {hint}", runs)
    ort = EvalResult.read(ort_file)
    ov = evaluated_on(model, task, args, "openvino", RuntimeOptions(threads=2))
    metric = build_task(task, resolve_model(CHAINS[chain][task])).new_metric()
    ci = paired_delta_interval(metric, ort.samples, ov.samples)
    by_key = {s["key"]: s for s in ort.samples}
    differ = sum(decision_differs(task, by_key[s["key"]], s) for s in ov.samples)
    primary = ort.settings["primary_metric"]
    row = {"chain": chain, "task": task, "test": TEST[task], "samples": ov.count, "metric": primary,
           "onnxruntime": ort.metrics[primary], "openvino": ov.metrics[primary],
           "low": ci["low"] if ci else None, "high": ci["high"] if ci else None,
           "decisions_differ": differ}  # fmt: skip
    delta = 100 * (row["openvino"] - row["onnxruntime"])
    interval = f"95% [{100 * row['low']:+.2f}, {100 * row['high']:+.2f}]" if ci else ""
    if task in args.emulation_tasks:
        emulated = evaluated_on(
            model, task, args, "onnxruntime", RuntimeOptions(threads=2, optimization="disable")
        )
        ref = {s["key"]: s for s in emulated.samples}
        row["ort_vs_emulation"] = sum(decision_differs(task, ref[s["key"]], s) for s in ort.samples)
        row["openvino_vs_emulation"] = sum(decision_differs(task, ref[s["key"]], s) for s in ov.samples)
        print(f"  {chain} {task:4} decisions differing from the QDQ graph run in float: onnxruntime "
              f"{row['ort_vs_emulation']}, openvino {row['openvino_vs_emulation']}", flush=True)  # fmt: skip
    print(f"  {chain} {task:4} {primary:6} onnxruntime {row['onnxruntime']:.4f}  openvino "
          f"{row['openvino']:.4f}  {delta:+.2f} pt  {interval}  {differ}/{ov.count} decisions differ",
          flush=True)  # fmt: skip
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chains", nargs="+", default=["v6", "v3"], choices=sorted(CHAINS))
    ap.add_argument("--shared", type=Path, default=Path("../shared/data/icdar2015"))
    ap.add_argument("--tasks", nargs="+", default=["det", "cls", "rec"], choices=["det", "cls", "rec"])
    ap.add_argument("--runs", type=Path, default=Path("runs"))
    ap.add_argument("--out", type=Path, default=Path("runs/openvino/accuracy.json"))
    ap.add_argument("--emulation-tasks", nargs="*", default=["cls", "rec"],
                    help="tasks also run as the QDQ graph in float (both runtimes' reference)")  # fmt: skip
    args = ap.parse_args()
    host = machine_description()
    print(host, flush=True)
    rows = [compare(chain, task, args) for chain in args.chains for task in args.tasks]
    command = "python benchmarks/openvino_accuracy.py" + (
        f" --chains {' '.join(args.chains)}" if args.chains != ["v6", "v3"] else ""
    )
    write_json_atomic(args.out, {"host": host, "command": command, "rows": rows})
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    run_script(main)
