"""Layer-wise float vs INT8 comparison: cosine, SNR, max/mean abs error for every matched tensor.

Two modes:

* **cumulative** - the INT8 model as it runs: every tensor carries the error of all layers before it.
* **isolated** - each quantized layer sees the *float* model's inputs (quantized with that layer's
  own input QuantizeLinear parameters), so its row is the error that layer adds by itself. Method:
  one modified copy of the QDQ graph in which every activation ``X -> Q -> DQ -> consumers`` gets a
  twin ``X__float -> Q' -> DQ' -> consumers`` (same scale and zero point), ``X__float`` being a new
  graph input fed with the float model's ``X``. The original ``Q -> DQ`` still receives the layer's
  own output, which is what is compared. All layers are thus measured in one run per input.

Statistics are summed over all inputs before the ratios are taken (SNR = 10 log10(sum x^2 /
sum (x - y)^2), x the float tensor, y the INT8 model's dequantized tensor).
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from ocrquant.analysis.dump import (
    DEFAULT_CHUNK,
    Feeds,
    analysis_session,
    as_feeds,
    auto_chunk_size,
    read_pair_index,
)
from ocrquant.analysis.graph import (
    GraphView,
    MatchResult,
    load_model,
    match_tensors,
    tensor_elem_types,
    with_outputs,
)
from ocrquant.errors import OcrQuantError
from ocrquant.fileio import write_json_atomic, write_text_atomic

MODES = ("cumulative", "isolated")
ISO_SUFFIX = "__float"
log = logging.getLogger("ocrquant")


def fit_channels(x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """``y`` as a counterpart of float tensor ``x``: itself when the shapes agree, its first channels
    when it only has more of them (the ort-cpu ``align_channels`` pass pads channel groups with zero
    channels at the end), None when it is another tensor."""
    if x.shape == y.shape:
        return y
    others = x.shape[:1] + x.shape[2:] == y.shape[:1] + y.shape[2:]
    if x.ndim == y.ndim >= 2 and y.shape[1] > x.shape[1] and others:
        return y[:, : x.shape[1]]
    return None


def channel_widths(model: onnx.ModelProto) -> dict[str, int]:
    """Axis-1 size of every tensor shape inference can size (to pad float values fed to a model whose
    channel groups ``align_channels`` widened)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    widths = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim if vi.type.HasField("tensor_type") else []
        if len(dims) >= 2 and dims[1].HasField("dim_value"):
            widths[vi.name] = int(dims[1].dim_value)
    return widths


def _widen(value: np.ndarray, width: int | None) -> np.ndarray:
    """Pad ``value`` with zero channels (axis 1) up to ``width``."""
    if width is None or value.ndim < 2 or value.shape[1] >= width:
        return value
    pads = [(0, 0)] * value.ndim
    pads[1] = (0, width - value.shape[1])
    return np.pad(value, pads)


class ErrorStats:
    """Running sums from which cosine, SNR and abs errors are computed at the end (float64)."""

    def __init__(self) -> None:
        self.sx2 = self.sy2 = self.sxy = self.se2 = self.sae = 0.0
        self.max_abs = 0.0
        self.n = 0

    def update(self, x: np.ndarray, y: np.ndarray) -> None:
        fitted = fit_channels(x, y)
        if fitted is None:
            raise OcrQuantError(
                f"shape mismatch between float {list(x.shape)} and INT8 {list(y.shape)} tensor"
            )
        y = fitted
        x = np.asarray(x, dtype=np.float64).ravel()
        y = np.asarray(y, dtype=np.float64).ravel()
        e = x - y
        self.sx2 += float(x @ x)
        self.sy2 += float(y @ y)
        self.sxy += float(x @ y)
        self.se2 += float(e @ e)
        self.sae += float(np.abs(e).sum())
        self.max_abs = max(self.max_abs, float(np.abs(e).max(initial=0.0)))
        self.n += x.size

    @property
    def cosine(self) -> float:
        if self.sx2 == 0 and self.sy2 == 0:
            return 1.0
        if self.sx2 == 0 or self.sy2 == 0:
            return 0.0
        return self.sxy / math.sqrt(self.sx2 * self.sy2)

    @property
    def snr_db(self) -> float:
        if self.se2 == 0:
            return math.inf
        if self.sx2 == 0:
            return -math.inf
        return 10.0 * math.log10(self.sx2 / self.se2)

    @property
    def mean_abs(self) -> float:
        return self.sae / self.n if self.n else 0.0


@dataclass
class LayerStat:
    """One matched tensor in one mode. ``depth`` is its topological index in the float graph."""

    depth: int
    float_name: str
    quant_name: str
    op_type: str
    mode: str
    cosine: float
    snr_db: float
    max_abs: float
    mean_abs: float
    numel: int


@dataclass
class CompareResult:
    float_model: str
    quant_model: str
    samples: int
    modes: list[str]
    rows: list[LayerStat]
    unmatched: list[str] = field(default_factory=list)

    def sorted_rows(self, mode: str | None = None) -> list[LayerStat]:
        """Worst SNR first (the order in which to look at layers, or to rank them for sensitivity)."""
        rows = [r for r in self.rows if mode is None or r.mode == mode]
        return sorted(rows, key=lambda r: (r.snr_db, r.depth))

    def worst(self, k: int = 10, mode: str = "isolated") -> list[LayerStat]:
        mode = mode if mode in self.modes else self.modes[0]
        return self.sorted_rows(mode)[:k]

    def to_json(self, path: str | Path) -> None:
        rows = [{k: _finite(v) for k, v in asdict(r).items()} for r in self.sorted_rows()]
        write_json_atomic(
            path,
            {
                "float_model": self.float_model,
                "quant_model": self.quant_model,
                "samples": self.samples,
                "modes": self.modes,
                "unmatched": self.unmatched,
                "layers": rows,
            },
        )

    def to_csv(self, path: str | Path) -> None:
        buf = io.StringIO()
        names = list(LayerStat.__dataclass_fields__)
        writer = csv.DictWriter(buf, fieldnames=names)
        writer.writeheader()
        for r in self.sorted_rows():
            writer.writerow(asdict(r))
        write_text_atomic(path, buf.getvalue())


def _finite(v: object) -> object:
    """JSON has no infinity: an exact match (SNR +inf) is written as null."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _rows(match: MatchResult, stats: dict[str, ErrorStats], mode: str) -> list[LayerStat]:
    rows = []
    for m in match.matches:
        s = stats.get(m.float_name)
        if s is None or s.n == 0:
            continue
        rows.append(
            LayerStat(
                m.float_index,
                m.float_name,
                m.quant_name,
                m.op_type,
                mode,
                s.cosine,
                s.snr_db,
                s.max_abs,
                s.mean_abs,
                s.n,
            )
        )
    return rows


def build_isolated_model(
    quant: onnx.ModelProto, float_tensors: set[str]
) -> tuple[onnx.ModelProto, list[str]]:
    """The isolated-mode graph (see module doc); returns it and the float tensors it wants as inputs."""
    view = GraphView(quant)
    position = {id(n): i for i, n in enumerate(quant.graph.node)}
    after: dict[int, list[onnx.NodeProto]] = {}  # node position -> twins placed right after it
    rename: dict[str, str] = {}
    fed: list[str] = []
    for q in quant.graph.node:
        x = q.input[0] if q.input else ""
        if (
            q.op_type != "QuantizeLinear"
            or view.is_constant(x)
            or x in view.input_names
            or x not in float_tensors
        ):
            continue
        dqs = [n for n in view.consumers.get(q.output[0], []) if n.op_type == "DequantizeLinear"]
        if not dqs:
            continue
        group = [_twin(q, x + ISO_SUFFIX)]
        for dq in dqs:
            group.append(_twin(dq, group[0].output[0]))
            rename[dq.output[0]] = group[-1].output[0]
        after.setdefault(max(position[id(n)] for n in dqs), []).extend(group)
        fed.append(x)
    m = onnx.ModelProto()
    m.CopyFrom(quant)
    nodes = []
    for i, node in enumerate(quant.graph.node):
        new = onnx.NodeProto()
        new.CopyFrom(node)
        for j, inp in enumerate(new.input):
            if inp in rename:
                new.input[j] = rename[inp]
        nodes.append(new)
        nodes.extend(after.get(i, []))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    for x in fed:
        m.graph.input.append(onnx.helper.make_tensor_value_info(x + ISO_SUFFIX, onnx.TensorProto.FLOAT, None))
    return m, fed


def _twin(node: onnx.NodeProto, new_input: str) -> onnx.NodeProto:
    """A copy of a Q or DQ node reading ``new_input`` and writing ``<output>__float``."""
    twin = onnx.NodeProto()
    twin.CopyFrom(node)
    twin.name = f"{node.name}{ISO_SUFFIX}"
    twin.input[0] = new_input
    twin.output[0] = node.output[0] + ISO_SUFFIX
    return twin


def compare_models(
    float_path: str | Path,
    quant_path: str | Path,
    inputs: Sequence[np.ndarray | Feeds],
    *,
    mode: str = "both",
    chunk_size: int = DEFAULT_CHUNK,
    threads: int = 0,
    progress: bool = True,
) -> CompareResult:
    """Compare every matched tensor of the float and INT8 models on ``inputs``."""
    modes = list(MODES) if mode == "both" else [mode]
    if any(m not in MODES for m in modes):
        raise OcrQuantError(f"unknown compare mode '{mode}' (cumulative, isolated, both)")
    if not inputs:
        raise OcrQuantError("no inputs to compare on (empty dataset or --limit 0)")
    f_model, q_model = load_model(float_path), load_model(quant_path)
    match = match_tensors(f_model, q_model)
    f_types = tensor_elem_types(f_model)
    rows: list[LayerStat] = []
    shape_mismatch: list[str] = []  # same name, another shape: a rewrite reused the name
    for md in modes:
        if md == "cumulative":
            q_run, extra_names = q_model, []
        else:
            q_run, extra_names = build_isolated_model(q_model, set(GraphView(f_model).activation_tensors()))
        stats = _accumulate(
            f_model,
            f_types,
            q_run,
            match,
            inputs,
            extra_names,
            chunk_size,
            threads,
            f"compare ({md})" if progress else None,
            channel_widths(q_model) if extra_names else {},
        )
        rows.extend(_rows(match, stats, md))
        shape_mismatch += [m.float_name for m in match.matches if m.float_name not in stats]
    shape_mismatch = list(dict.fromkeys(shape_mismatch))
    if shape_mismatch:
        log.warning(
            "%d tensors share a name but not a shape with their INT8 counterpart (e.g. %s); "
            "left out of the comparison", len(shape_mismatch), ", ".join(shape_mismatch[:3]),
        )  # fmt: skip
    match.unmatched.extend(shape_mismatch)
    return CompareResult(str(float_path), str(quant_path), len(inputs), modes, rows, match.unmatched)


def _accumulate(f_model, f_types, q_model, match, inputs, iso_inputs, chunk_size, threads, desc, widths):
    """Run both models chunk by chunk (bounded memory) and sum the error statistics. ``widths``: the
    INT8 model's channel counts of the float tensors fed to it in isolated mode."""
    q_types = tensor_elem_types(q_model)
    stats = {m.float_name: ErrorStats() for m in match.matches}
    pairs = match.matches
    chunk_size = chunk_size or auto_chunk_size(inputs)
    chunks = [pairs[i : i + chunk_size] for i in range(0, len(pairs), chunk_size)]
    iso_feeds: list[Feeds] = []
    if iso_inputs:
        fs = analysis_session(with_outputs(f_model, iso_inputs, f_types).SerializeToString(), threads)
        iso_feeds = [
            {
                f"{n}{ISO_SUFFIX}": _widen(a, widths.get(n))
                for n, a in zip(iso_inputs, fs.run(iso_inputs, feeds), strict=True)
            }
            for feeds in as_feeds(fs, inputs)
        ]
    bar = tqdm(total=len(chunks) * len(inputs), desc=desc, disable=desc is None, unit="run")
    for chunk in chunks:
        f_names = [m.float_name for m in chunk]
        q_names = list(dict.fromkeys(m.quant_name for m in chunk))
        fs = analysis_session(with_outputs(f_model, f_names, f_types).SerializeToString(), threads)
        qs = analysis_session(with_outputs(q_model, q_names, q_types).SerializeToString(), threads)
        for k, feeds in enumerate(as_feeds(fs, inputs)):
            f_out = dict(zip(f_names, fs.run(f_names, feeds), strict=True))
            q_feeds = dict(feeds)
            if iso_feeds:
                q_feeds.update(iso_feeds[k])
            q_out = dict(zip(q_names, qs.run(q_names, q_feeds), strict=True))
            for m in chunk:
                f_val, q_val = f_out[m.float_name], fit_channels(f_out[m.float_name], q_out[m.quant_name])
                if q_val is None:  # same name, different tensor (a rewrite reused it)
                    stats.pop(m.float_name, None)
                    continue
                if m.float_name in stats:
                    stats[m.float_name].update(f_val, q_val)
            bar.update(1)
    bar.close()
    return stats


def compare_from_dump(dump_dir: str | Path) -> CompareResult:
    """Cumulative comparison from a ``dump_pair`` directory written earlier (no model is run)."""
    dump_dir = Path(dump_dir)
    index = read_pair_index(dump_dir)
    rows = []
    unmatched = list(index.get("unmatched", []))
    for pair in index["pairs"]:
        s = ErrorStats()
        for k in range(int(index["samples"])):
            fx, qx = (
                dump_dir / pair["float_dir"] / f"batch_{k}.npy",
                dump_dir / pair["quant_dir"] / f"batch_{k}.npy",
            )
            for p in (fx, qx):
                if not p.is_file():
                    raise OcrQuantError("dump file missing (dump interrupted?)", p)
            x, y = np.load(fx, allow_pickle=False), np.load(qx, allow_pickle=False)
            if fit_channels(x, y) is None:
                # a tensor whose layout the target's rewrites changed (rec's attention reshapes): no
                # element-wise counterpart, listed with the unmatched ones instead of failing the run
                unmatched.append(f"{pair['float']} (float {list(x.shape)}, INT8 {list(y.shape)})")
                break
            s.update(x, y)
        if s.n == 0:
            continue
        rows.append(
            LayerStat(
                int(pair["depth"]),
                pair["float"],
                pair["quant"],
                pair["op_type"],
                "cumulative",
                s.cosine,
                s.snr_db,
                s.max_abs,
                s.mean_abs,
                s.n,
            )
        )
    return CompareResult(
        index["float_model"],
        index["quant_model"],
        int(index["samples"]),
        ["cumulative"],
        rows,
        unmatched,
    )
