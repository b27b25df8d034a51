"""Analysis commands: dump, compare, simulate, npy2bin, bin2npy, profile (logic in ocrquant.analysis)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from rich.table import Table

from ocrquant.analysis.binio import bin2npy, npy2bin, read_bin, write_bin
from ocrquant.analysis.compare import compare_from_dump, compare_models
from ocrquant.analysis.dump import dump_model, dump_pair
from ocrquant.analysis.graph import float_reference
from ocrquant.analysis.inputs import load_inputs
from ocrquant.analysis.plot import plot_snr
from ocrquant.analysis.profile import PROFILERS
from ocrquant.analysis.sensitivity import json_safe
from ocrquant.analysis.simulate import Simulator
from ocrquant.analysis.simulate.agreement import compare_with_runtime, kernel_agreement
from ocrquant.cli.common import (
    LimitOpt,
    ShapeOpt,
    StrictOpt,
    ThreadsOpt,
    check_threads,
    console,
    guard_outputs,
)
from ocrquant.data import READ_POLICY
from ocrquant.errors import OcrQuantError
from ocrquant.fileio import write_json_atomic
from ocrquant.onnx_shapes import declared_dims
from ocrquant.zoo.resolve import resolve_model

if TYPE_CHECKING:
    import onnx

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Zoo name or path to an .onnx file.")]
DataOpt = Annotated[Path | None, typer.Option("--data", "-d", help="Labelled dataset directory (inputs).")]
TaskOpt = Annotated[str | None, typer.Option("--task", help="det, cls or rec (inferred for zoo models).")]
ChunkOpt = Annotated[
    int, typer.Option("--chunk", help="Tensors exposed per model run (0 = from the input size).", min=0)
]


def _shape(text: str | None, option: str) -> list[int] | None:
    """'1,3,48,320' (or 1x3x48x320, or spaces) -> [1, 3, 48, 320]."""
    if not text:
        return None
    parts = [p for p in text.replace("x", ",").replace(" ", ",").split(",") if p]
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise OcrQuantError(f"{option} wants integers like 1,3,48,320, got '{text}'") from None
    if not dims or any(d <= 0 for d in dims):
        raise OcrQuantError(f"{option} wants positive integers, got '{text}'")
    return dims


def _inputs(
    model: str,
    data: Path | None,
    task: str | None,
    limit: int | None,
    shape: tuple | None,
    strict: bool = False,
):

    READ_POLICY.strict = strict
    if data is None:
        raise OcrQuantError("--data DIR is required (a labelled dataset whose images feed the model)")
    fixed = tuple(shape) if shape else None
    return load_inputs(model, data, task, limit, progress=True, input_shape=fixed)


def _model_path(model: str) -> Path:

    return Path(resolve_model(model).path)


def _fmt(v: float, digits: int = 4) -> str:
    return "inf" if isinstance(v, float) and math.isinf(v) else f"{v:.{digits}f}"


def dump_cmd(
    model: ModelOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")],
    quant: Annotated[
        Path | None, typer.Option("--quant", help="INT8 (QDQ) model: dump both and match them.")
    ] = None,
    data: DataOpt = None,
    task: TaskOpt = None,
    limit: LimitOpt = 1,
    input_shape: ShapeOpt = None,
    chunk: ChunkOpt = 0,
    threads: ThreadsOpt = 0,
    strict: StrictOpt = False,
    layers: Annotated[
        list[str] | None,
        typer.Option(
            "--layers", help="Only tensors whose name, node name or op type match (glob, repeatable)."
        ),
    ] = None,
    float16: Annotated[
        bool, typer.Option("--float16", help="Store float32 tensors as float16 (half size).")
    ] = False,
) -> None:
    """Save every intermediate tensor as OUT/{float,quant}/<index>__<name>/batch_<k>.npy (bounded memory)."""

    guard_outputs([model, quant], folders=[out], datasets=[data])
    check_threads(threads)
    _, arrays = _inputs(model, data, task, limit, input_shape, strict)
    path = _model_path(model)
    if quant is None:
        index = dump_model(
            path, arrays, out, chunk_size=chunk, threads=threads, layers=layers or (), float16=float16
        )
        console.print(
            f"wrote {len(index)} tensors x {len(arrays)} inputs to {out} (index: {out}/tensors.json)"
        )
        return

    with float_reference(path, quant) as reference:
        index = dump_pair(
            reference,
            quant,
            arrays,
            out,
            chunk_size=chunk,
            threads=threads,
            layers=layers or (),
            float16=float16,
        )
    console.print(
        f"wrote {len(index['pairs'])} matched tensor pairs x {len(arrays)} inputs to {out} "
        f"(index: {out}/index.json; {len(index['unmatched'])} float tensors unmatched)"
    )


def compare_cmd(
    float_model: Annotated[str | None, typer.Argument(help="Float model (zoo name or .onnx).")] = None,
    quant_model: Annotated[Path | None, typer.Argument(help="INT8 QDQ model (.onnx).")] = None,
    data: DataOpt = None,
    task: TaskOpt = None,
    limit: LimitOpt = 8,
    mode: Annotated[str, typer.Option(help="cumulative | isolated | both.")] = "both",
    from_dump: Annotated[
        Path | None, typer.Option("--from-dump", help="Compare a 'dump --quant' directory.")
    ] = None,
    sim: Annotated[
        bool, typer.Option("--sim", help="Also: integer simulator vs onnxruntime on the INT8 model.")
    ] = False,
    csv: Annotated[Path | None, typer.Option("--csv", help="Write all rows as CSV.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write all rows as JSON.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="PNG of SNR along the network depth.")] = None,
    top: Annotated[int, typer.Option(help="Rows shown per mode in the terminal.", min=0)] = 15,
    input_shape: ShapeOpt = None,
    chunk: ChunkOpt = 0,
    threads: ThreadsOpt = 0,
    strict: StrictOpt = False,
) -> None:
    """Layer-wise float vs INT8 error (cosine, SNR, max/mean abs), worst SNR first."""

    guard_outputs([float_model, quant_model, from_dump], files=[csv, json_out, plot], datasets=[data])
    check_threads(threads)
    if sim and (quant_model is None or from_dump is not None):
        raise OcrQuantError("--sim needs INT8.onnx and --data (not --from-dump)")
    if from_dump is not None:
        result = compare_from_dump(from_dump)
    else:
        if float_model is None or quant_model is None:
            raise OcrQuantError("give FLOAT.onnx and INT8.onnx, or --from-dump DIR")
        _, arrays = _inputs(float_model, data, task, limit, input_shape, strict)

        with float_reference(_model_path(float_model), quant_model) as reference:
            result = compare_models(
                reference, quant_model, arrays, mode=mode, chunk_size=chunk, threads=threads
            )
    for md in result.modes:
        table = Table(
            title=f"{md}: worst {top} of {len(result.sorted_rows(md))} tensors ({result.samples} inputs)"
        )
        for col in ("depth", "tensor", "op", "SNR dB", "cosine", "max abs", "mean abs"):
            table.add_column(col, justify="left" if col in ("tensor", "op") else "right", overflow="fold")
        for r in result.worst(top, md):
            table.add_row(
                str(r.depth),
                r.float_name,
                r.op_type,
                _fmt(r.snr_db, 2),
                _fmt(r.cosine),
                _fmt(r.max_abs),
                _fmt(r.mean_abs),
            )
        console.print(table)
    if result.unmatched:
        console.print(
            f"{len(result.unmatched)} float tensors without INT8 counterpart, e.g. "
            f"{', '.join(result.unmatched[:5])}"
        )
    if csv:
        result.to_csv(csv)
        console.print(f"wrote {csv}")
    if json_out:
        result.to_json(json_out)
        console.print(f"wrote {json_out}")
    if plot:
        plot_snr(result, plot)
        console.print(f"wrote {plot}")
    if sim:
        _print_agreement(quant_model, arrays, "half_away", "fixed", threads)


def _print_agreement(
    model: Path, arrays, rounding: str, requant: str, threads: int, json_out: Path | None = None
) -> None:

    # float32 requantisation mirrors onnxruntime's fused kernels, so judge each kernel against those;
    # the fixed-point path is an accelerator's arithmetic, judged against the file's own semantics.
    runtime = "ort-optimized" if requant == "float32" else "ort-reference"
    kernels = kernel_agreement(model, arrays, rounding=rounding, requant=requant, runtime=runtime)
    table = Table(title=f"per-kernel agreement with {runtime} (each node fed onnxruntime's own inputs)")
    for col in ("op", "nodes", "exact int match", "max |diff|", "values"):
        table.add_column(col, justify="left" if col == "op" else "right")
    for k in kernels:
        table.add_row(k.op_type, str(k.nodes), f"{k.exact_rate:.4%}", str(k.max_diff), str(k.numel))
    console.print(table)

    rows, report = compare_with_runtime(model, arrays, rounding=rounding, requant=requant, threads=threads)
    _print_report(report)
    table = Table(title=f"simulator ({rounding}, {requant} requant) vs onnxruntime, {len(arrays)} inputs")
    for col in ("output", "onnxruntime", "cosine", "SNR dB", "max abs", "int8 exact match"):
        table.add_column(
            col, justify="left" if col in ("output", "onnxruntime") else "right", overflow="fold"
        )
    for r in rows:
        rate = "-" if r.int_match_rate is None else f"{r.int_match_rate:.2%}"
        table.add_row(r.name, r.runtime, f"{r.cosine:.6f}", _fmt(r.snr_db, 2), _fmt(r.max_abs), rate)
    console.print(table)
    if json_out is not None:
        payload = {
            "model": str(model), "inputs": len(arrays), "rounding": rounding, "requant": requant,
            "outputs": [asdict(r) for r in rows], "kernels": [asdict(k) for k in kernels],
        }  # fmt: skip
        write_json_atomic(json_out, json_safe(payload))
    if rounding != "half_even" and requant == "fixed":
        console.print(
            "note: onnxruntime rounds ties to even; with power-of-two scales ties are frequent, so "
            "--rounding half_even separates the rounding rule from kernel differences; --requant float32 "
            "does what onnxruntime's CPU kernels do."
        )


def _print_report(report) -> None:
    table = Table(title="simulator: how each op type ran")
    for col in ("op", "integer", "float", "why float"):
        table.add_column(col, justify="right" if col in ("integer", "float") else "left")
    for op, n_int, n_float, why in report.by_op():
        table.add_row(op, str(n_int), str(n_float), why)
    console.print(table)
    overflow = sum(n.overflows for n in report.nodes)
    if overflow:
        console.print(f"[yellow]int32 accumulator saturated {overflow} times[/]")


def simulate_cmd(
    model: Annotated[Path, typer.Option("--model", "-m", help="INT8 QDQ model (.onnx).")],
    data: DataOpt = None,
    task: TaskOpt = None,
    limit: LimitOpt = 4,
    input_bin: Annotated[
        Path | None, typer.Option("--input-bin", help="Raw input tensor (see --bin-shape, --bin-dtype).")
    ] = None,
    bin_shape: Annotated[
        str | None, typer.Option("--bin-shape", help="Shape of --input-bin, e.g. 1,3,48,320.")
    ] = None,
    bin_dtype: Annotated[str, typer.Option("--bin-dtype", help="dtype of --input-bin.")] = "float32",
    output_bin: Annotated[
        Path | None, typer.Option("--output-bin", help="Write the first output raw here.")
    ] = None,
    output_int: Annotated[
        bool, typer.Option("--output-int", help="--output-bin holds the integer output.")
    ] = False,
    compare: Annotated[
        bool, typer.Option("--compare", help="Agreement with onnxruntime per output.")
    ] = False,
    rounding: Annotated[str, typer.Option(help="half_away | half_up | half_even.")] = "half_away",
    requant: Annotated[
        str,
        typer.Option(
            help="fixed: int32 multiplier + shift (integer accelerators); float32: float32 scale, "
            "ties to even (onnxruntime CPU / TensorRT kernels)."
        ),
    ] = "fixed",
    input_shape: ShapeOpt = None,
    threads: ThreadsOpt = 0,
    strict: StrictOpt = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="With --compare: write the agreement rows as JSON.")
    ] = None,
) -> None:
    """Run a QDQ model as an integer accelerator would (int8 x int8 -> int32, fixed-point requantisation)."""

    guard_outputs([model, input_bin], files=[output_bin, json_out], datasets=[data])
    if json_out is not None and not compare:
        raise OcrQuantError("--json writes the --compare rows; add --compare")
    check_threads(threads)
    sim = Simulator(model, rounding=rounding, requant=requant)
    name = sim.view.input_names[0]
    feeds: dict = {}
    if input_bin is not None:
        if not bin_shape:
            raise OcrQuantError("--input-bin needs --bin-shape N,C,H,W")
        raw = read_bin(input_bin, _shape(bin_shape, "--bin-shape"), bin_dtype)
        _check_declared_shape(sim.model, list(raw.shape), model)
        if raw.dtype.kind == "f":
            arrays = [raw.astype("float32")]
        else:  # already quantized: it replaces the output of the input's QuantizeLinear
            q_name, params = sim.input_quantizer(name)
            if raw.dtype != params.dtype:
                raise OcrQuantError(
                    f"the model quantizes its input to {params.dtype}, --bin-dtype is {bin_dtype}"
                )
            feeds[q_name] = raw
            arrays = [np.zeros(raw.shape, dtype=np.float32)]
            compare = False
            console.print(
                f"input is {bin_dtype} (scale {params.scale.ravel()[0]:.6g}, zero point "
                f"{params.zero_point.ravel()[0]}): fed after the input QuantizeLinear"
            )
    else:
        _, arrays = _inputs(str(model), data, task, limit, input_shape, strict)
    if compare:
        _print_agreement(model, arrays, rounding, requant, threads, json_out)
        return
    outputs = sim.run({name: arrays[0], **feeds})
    _print_report(sim.report)
    first = sim.view.output_names[0]
    console.print(
        f"output {first}: shape {list(outputs[first].shape)}, min {outputs[first].min():.4f}, "
        f"max {outputs[first].max():.4f}"
    )
    if output_bin:
        if output_int:
            if first not in sim.int_outputs:
                raise OcrQuantError(
                    f"output {first} is not an integer tensor (no DequantizeLinear produces it)"
                )
            q = sim.int_outputs[first].q
            write_bin(output_bin, q)
            console.print(f"wrote {output_bin} ({q.dtype}, shape {list(q.shape)})")
        else:
            write_bin(output_bin, outputs[first], "float32")
            console.print(f"wrote {output_bin} (float32, shape {list(outputs[first].shape)})")


def _check_declared_shape(model: onnx.ModelProto, shape: list[int], path: Path) -> None:
    """Refuse an input whose shape the model's first input does not declare (rank, or a fixed size):
    the model would fail deep inside a kernel, or run and give an output of the wrong shape."""

    declared = declared_dims(model.graph.input[0], unknown=None)
    fixed_ok = all(not isinstance(d, int) or d <= 0 or d == s for d, s in zip(declared, shape, strict=False))
    if len(declared) != len(shape) or not fixed_ok:
        raise OcrQuantError(f"input of shape {shape}, but the model's input is {declared}", path)


def npy2bin_cmd(
    npy: Annotated[Path, typer.Argument(help="Input .npy file.")],
    out: Annotated[Path, typer.Argument(help="Output raw .bin file.")],
    dtype: Annotated[str | None, typer.Option(help="Convert to this dtype first (default: keep).")] = None,
) -> None:
    """Write a .npy tensor as raw little-endian C-order bytes."""

    guard_outputs([npy], files=[out])
    shape, dt = npy2bin(npy, out, dtype)
    console.print(f"wrote {out}: shape {' '.join(map(str, shape))} {dt}")


def bin2npy_cmd(
    bin_path: Annotated[Path, typer.Argument(help="Raw .bin file.")],
    out: Annotated[Path, typer.Argument(help="Output .npy file.")],
    shape: Annotated[str, typer.Option("--shape", help="Tensor shape, e.g. 1,3,48,320.")],
    dtype: Annotated[str, typer.Option(help="Element type.")] = "float32",
) -> None:
    """Read a raw tensor (checked against shape x dtype size) into a .npy file."""

    guard_outputs([bin_path], files=[out])
    arr = bin2npy(bin_path, out, _shape(shape, "--shape"), dtype)
    console.print(f"wrote {out}: shape {list(arr.shape)} {arr.dtype}")


def profile_cmd(
    model: ModelOpt,
    data: DataOpt = None,
    compare: Annotated[Path | None, typer.Option("--compare", help="Also profile this (INT8) model.")] = None,
    task: TaskOpt = None,
    limit: LimitOpt = 4,
    runs: Annotated[int | None, typer.Option(help="Timed runs (default: one per input).", min=1)] = None,
    optimization: Annotated[str, typer.Option(help="disable | basic | extended | all.")] = "all",
    top: Annotated[int, typer.Option(help="Slowest nodes shown.", min=0)] = 15,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the full profile as JSON.")] = None,
    input_shape: ShapeOpt = None,
    threads: ThreadsOpt = 0,
    strict: StrictOpt = False,
    backend: Annotated[
        str,
        typer.Option(
            help="onnxruntime (its profiler) or openvino (its performance counters: each layer's kernel "
            "and the precision it ran in)."
        ),
    ] = "onnxruntime",
) -> None:
    """Per-node and per-op-type latency, MACs and parameters per layer (and, in OpenVINO, the
    precision each layer ran in)."""

    if backend not in PROFILERS:
        raise OcrQuantError(f"--backend {backend}: profile knows {', '.join(PROFILERS)}")
    guard_outputs([model, compare], files=[json_out], datasets=[data])
    check_threads(threads)
    _, arrays = _inputs(model, data, task, limit, input_shape, strict)
    paths = [_model_path(model)] + ([compare] if compare else [])
    profile = PROFILERS[backend]
    results = [profile(p, arrays, runs=runs, threads=threads, optimization=optimization) for p in paths]
    for res in results:
        t = Table(
            title=f"{Path(res.model).name}: {res.total_ms:.2f} ms/run in nodes, "
            f"{res.total_macs / 1e9:.3f} GMAC, "
            f"{res.total_params / 1e6:.3f} M params, Q/DQ share {res.qdq_share:.1%}"
        )
        with_precision = any(n.precision for n in res.nodes)
        columns = ("node", "op", *(("precision",) if with_precision else ()), "ms", "share", "MMAC", "params")
        for col in columns:
            t.add_column(col, justify="left" if col in ("node", "op", "precision") else "right")
        for n in res.nodes[:top]:
            t.add_row(
                n.name,
                n.op_type,
                *((n.precision or "-",) if with_precision else ()),
                f"{n.ms:.3f}",
                f"{n.share:.1%}",
                "-" if n.macs is None else f"{n.macs / 1e6:.2f}",
                "-" if n.params is None else str(n.params),
            )
        console.print(t)
        if with_precision:
            ran = defaultdict(float)
            for n in res.nodes:
                ran[n.precision or "other"] += n.share
            console.print("time by precision: " + ", ".join(f"{p} {s:.1%}" for p, s in sorted(ran.items())))
        ops = Table(title="per op type")
        for col in ("op", "nodes", "ms", "share"):
            ops.add_column(col, justify="left" if col == "op" else "right")
        for op, count, ms, share in res.by_op:
            ops.add_row(op, str(count), f"{ms:.3f}", f"{share:.1%}")
        console.print(ops)
        for hint in res.hints:
            console.print(f"note ({Path(res.model).name}): {hint}")
    if len(results) == 2:
        a, b = results
        console.print(
            f"{Path(b.model).name} vs {Path(a.model).name}: {a.total_ms / max(b.total_ms, 1e-9):.2f}x "
            f"({a.total_ms:.2f} -> {b.total_ms:.2f} ms/run)"
        )
    if json_out:
        write_json_atomic(json_out, [asdict(r) for r in results])
        console.print(f"wrote {json_out}")


def register(app: typer.Typer) -> None:
    app.command("dump")(dump_cmd)
    app.command("compare")(compare_cmd)
    app.command("simulate")(simulate_cmd)
    app.command("npy2bin")(npy2bin_cmd)
    app.command("bin2npy")(bin2npy_cmd)
    app.command("profile")(profile_cmd)
