"""``ocrquant run``: quantize, evaluate float and INT8, time and report every task of the chain."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ocrquant.cli.common import (
    LimitOpt,
    RayOpt,
    ShapeOpt,
    StrictOpt,
    WorkersOpt,
    check_threads,
    console,
    guard_outputs,
)
from ocrquant.data import READ_POLICY
from ocrquant.errors import OcrQuantError
from ocrquant.report import CHAIN_COLUMNS, chain_cells, row_cells
from ocrquant.tuning.executor import ExecutorConfig, check_ray_address
from ocrquant.workflow import DATA_KIND, RunConfig, run

#: which of report.COLUMNS each terminal table of ``run`` shows (model first in both; the framework
#: column, 1, only when a framework was scored)
ACCURACY_CELLS = (0, 1, 2, 3, 4, 5)
SPEED_CELLS = (0, 6, 7, 8, 9, 10)
TERMINAL_HEADERS = ("model", "framework", "FP32", "INT8", "delta (95% CI)", "N", "FP32 ms", "INT8 ms",
                    "speed-up", "FP32 MB", "INT8 MB")  # fmt: skip


def _kind_paths(values: list[str] | None, tasks: list[str], option: str) -> dict[str, Path]:
    """``--data det=DIR --data rec=DIR`` or a single ``--data DIR`` when all tasks read one kind of set."""

    out: dict[str, Path] = {}
    kinds = {DATA_KIND.get(t, "det") for t in tasks}
    for value in values or []:
        if "=" in value:
            kind, path = value.split("=", 1)
            if kind not in ("det", "rec"):
                raise OcrQuantError(f"{option} {value}: the part before '=' must be det or rec")
            out[kind] = Path(path)
        elif len(kinds) == 1:
            out[next(iter(kinds))] = Path(value)
        else:
            raise OcrQuantError(
                f"{option} {value}: with tasks {', '.join(tasks)} write {option} det=DIR and rec=DIR"
            )
    for path in out.values():
        if not path.is_dir():
            raise OcrQuantError("not a directory", path)
    return out


def _budgets(values: list[str] | None, tasks: list[str]) -> dict[str, float]:
    """``--max-drop rec=1.0`` per task, or ``--max-drop 0.5`` for every task of the run."""
    out: dict[str, float] = {}
    for value in values or []:
        name, sep, points = value.rpartition("=")
        if sep and name not in ("det", "cls", "rec", "det-craft"):
            raise OcrQuantError(f"--max-drop {value}: the part before '=' must be det, cls or rec")
        try:
            budget = float(points)
        except ValueError:
            raise OcrQuantError(f"--max-drop {value}: '{points}' is not a number of points") from None
        if budget < 0:
            raise OcrQuantError(f"--max-drop {value}: a budget is a drop in points, >= 0")
        out.update({name: budget} if sep else {t: budget for t in tasks if t != "e2e"})
    return out


def _task_values(values: list[str] | None, tasks: list[str], option: str) -> dict[str, str]:
    """``TASK=VALUE`` pairs, or one bare VALUE when a single task runs."""
    out: dict[str, str] = {}
    for value in values or []:
        if "=" in value and value.split("=", 1)[0] in ("det", "cls", "rec", "det-craft"):
            k, v = value.split("=", 1)
            out[k] = v
        elif len(tasks) == 1:
            out[tasks[0]] = value
        else:
            raise OcrQuantError(f"{option} {value}: with several tasks write {option} TASK=VALUE")
    return out


def run_cmd(
    task: Annotated[
        list[str] | None, typer.Option("--task", help="det, cls, rec, e2e (repeatable; default det cls rec).")
    ] = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="TASK=MODEL or MODEL (one task).")
    ] = None,
    data: Annotated[
        list[str] | None, typer.Option("--data", help="Test set: det=DIR, rec=DIR, or DIR.")
    ] = None,
    calib_data: Annotated[
        list[str] | None,
        typer.Option("--calib-data", help="Calibration set (training data): det=DIR, rec=DIR, or DIR."),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Run directory (report.md, models, results).")
    ] = Path("runs/latest"),
    method: Annotated[
        str | None, typer.Option(help="Calibration method (default: the target's best).")
    ] = None,
    target: Annotated[
        str, typer.Option(help="Target profile: ort-cpu, openvino, tensorrt, npu-pow2.")
    ] = "ort-cpu",
    calib_size: Annotated[int, typer.Option("--calib-size", help="Calibration images.", min=1)] = 200,
    limit: LimitOpt = None,
    threads: Annotated[int, typer.Option(help="Runtime threads for evaluation and latency.", min=0)] = 2,
    framework: Annotated[
        str | None, typer.Option("--framework", help="Also evaluate the source framework: paddle or torch.")
    ] = None,
    latency_inputs: Annotated[
        int, typer.Option("--latency-inputs", help="Test inputs timed (float and INT8 interleaved).", min=1)
    ] = 16,
    backend: Annotated[
        str,
        typer.Option(
            help="onnxruntime (QDQ INT8) or ncnn (pnnx conversion, ncnn INT8 from the same calibration; "
            "default task det)."
        ),
    ] = "onnxruntime",
    max_drop: Annotated[
        list[str] | None,
        typer.Option(
            "--max-drop",
            help="Accuracy budget in points: TASK=POINTS (repeatable) or POINTS for every task. The most "
            "sensitive blocks stay float until INT8 is within it on held-out calibration-side images; "
            "the report lists them.",
        ),
    ] = None,
    keep_all_int8: Annotated[
        bool,
        typer.Option(
            "--keep-all-int8",
            help="Keep every quantizable layer INT8 even when auto's model may lose more than a point "
            "(90 % bound, 1000+ held-out images; by default the most sensitive blocks then stay float).",
        ),
    ] = False,
    strict: StrictOpt = False,
    input_shape: ShapeOpt = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", help="Images per model call in evaluation.", min=1)
    ] = 1,
    calib_batch_size: Annotated[
        int,
        typer.Option(
            "--calib-batch-size",
            help="Images per calibration run (1 where the model's batch is fixed).",
            min=1,
        ),
    ] = 8,
    int8: Annotated[
        list[str] | None,
        typer.Option(
            "--int8",
            help="TASK=INT8.onnx or INT8.onnx (one task): score this INT8 model (from `ocrquant quantize` "
            "or another tool) against the float model instead of quantizing; no calibration data needed.",
        ),
    ] = None,
    workers: WorkersOpt = 0,
    ray_address: RayOpt = None,
) -> None:
    """The whole workflow: quantize, evaluate float and INT8, write report.md and report.json.

    With no options it runs the default chain (PP-OCRv6 small det and rec, the v2.0 direction
    classifier) on the embedded sample set.
    """

    tasks = task or (["det"] if backend == "ncnn" else ["det", "cls", "rec"])
    models = _task_values(model, tasks, "--model")
    int8_paths = {k: Path(v) for k, v in _task_values(int8, tasks, "--int8").items()}
    if int8_paths and backend != "onnxruntime":
        raise OcrQuantError(f"--int8 scores an ONNX INT8 model; --backend {backend} makes its own")
    data_paths = _kind_paths(data, tasks, "--data")
    calib_paths = _kind_paths(calib_data, tasks, "--calib-data")
    guard_outputs(
        [*models.values(), *map(str, int8_paths.values())],
        folders=[out],
        datasets=[*data_paths.values(), *calib_paths.values()],
    )
    check_threads(threads)
    if ray_address:  # before any work: an address that does not answer is one line, not a late failure
        check_ray_address(ray_address)

    READ_POLICY.strict = strict
    cfg = RunConfig(
        tasks=tasks,
        models=models,
        data=data_paths,
        calib_data=calib_paths,
        out_dir=out,
        method=method,
        target=target,
        calib_size=calib_size,
        limit=limit,
        threads=threads,
        framework_backend=framework,
        latency_inputs=latency_inputs,
        backend=backend,
        max_drop=_budgets(max_drop, tasks),
        keep_all_int8=keep_all_int8,
        input_shape=input_shape,
        batch_size=batch_size,
        calib_batch_size=calib_batch_size,
        int8=int8_paths,
        executor=ExecutorConfig(workers, ray_address),
    )
    rows = run(cfg)
    # two narrow tables (accuracy, then speed and size) that fit an 80-column terminal; the report
    # files hold the full one
    with_framework = any(row.framework_metric is not None for row in rows)
    accuracy = ACCURACY_CELLS if with_framework else tuple(i for i in ACCURACY_CELLS if i != 1)
    for title, picks in (
        (f"accuracy (full table: {out}/report.html)", accuracy),
        ("speed and size", SPEED_CELLS),
    ):
        if not rows:
            break
        table = Table(*(TERMINAL_HEADERS[i] for i in picks), title=title)
        for row in rows:
            cells = row_cells(row)
            table.add_row(*(cells[i] for i in picks))
        console.print(table)
    chain = json.loads((out / "report.json").read_text()).get("e2e_chain", [])
    if chain:
        ctable = Table(*CHAIN_COLUMNS, title="end-to-end chain")
        for crow in chain:
            ctable.add_row(*chain_cells(crow))
        console.print(ctable)


def register(app: typer.Typer) -> None:
    app.command("run")(run_cmd)
