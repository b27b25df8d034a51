"""Reading ONNX graphs for analysis: topological tensor order, QDQ structure, float<->INT8 matching.

In a QDQ graph a float tensor ``X`` becomes ``X -> QuantizeLinear -> DequantizeLinear -> X'`` and the
consumers read ``X'``. The INT8 counterpart of the float tensor ``X`` is therefore ``X'`` (what the next
layer really sees, quantization error included), found either by name (``X`` still exists in the QDQ
graph and feeds a Q/DQ pair) or by position (the DQ output that feeds the same consumer node at the
same input slot). Quantizers keep node names, so consumers are matched by node name.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import NodeProto

from ocrquant.errors import OcrQuantError
from ocrquant.fileio import float_reference_path, read_sidecar, scratch_dir, sha256_file
from ocrquant.onnx_shapes import require_graph
from ocrquant.quantization.prepare import prepare_model

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")

# ':' separates "index:name" in the documentation's notation but is illegal in Windows file names
# (and starts an NTFS alternate data stream), so directories are named "<index>__<name>".
DIR_SEPARATOR = "__"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
MAX_NAME_CHARS = 120

log = logging.getLogger("ocrquant")


def load_model(path: str | Path, *, load_weights: bool = True) -> onnx.ModelProto:
    """Load an ONNX file; a missing or unreadable file is a one-line user error."""
    path = Path(path)
    if not path.is_file():
        raise OcrQuantError("model file not found", path)
    try:
        model = onnx.load(str(path), load_external_data=load_weights)
    except Exception as exc:  # onnx raises DecodeError and others on a corrupt file
        raise OcrQuantError(f"cannot read ONNX model: {str(exc).splitlines()[0][:200]}", path) from None
    return require_graph(model, path)


def safe_tensor_dirname(index: int, name: str) -> str:
    """``0012__conv2d_3.tmp_0``: portable on every file system, unique through the index prefix.

    Characters outside ``[A-Za-z0-9._-]`` become ``_``; a trailing dot (invalid on Windows) is
    replaced too and long names are cut, which the index prefix keeps unique.
    """
    safe = _UNSAFE.sub("_", name)[:MAX_NAME_CHARS].rstrip(".") or "_"
    return f"{index:04d}{DIR_SEPARATOR}{safe}"


@dataclass
class GraphView:
    """Producer/consumer maps and constants of one model, built once and queried many times."""

    model: onnx.ModelProto

    def __post_init__(self) -> None:
        g = self.model.graph
        self.initializers = {t.name: t for t in g.initializer}
        self.producer: dict[str, NodeProto] = {}
        self.consumers: dict[str, list[NodeProto]] = defaultdict(list)
        for node in g.node:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers[inp].append(node)
        self.nodes_by_name = {n.name: n for n in g.node if n.name}
        self.input_names = [i.name for i in g.input if i.name not in self.initializers]
        self.output_names = [o.name for o in g.output]

    def is_constant(self, name: str) -> bool:
        """An initializer, a Constant node's output, or derived from constants only through DQ."""
        if name in self.initializers:
            return True
        node = self.producer.get(name)
        if node is None:
            return False
        if node.op_type == "Constant":
            return True
        if node.op_type == "DequantizeLinear":
            return self.is_constant(node.input[0])
        return False

    def is_weight_dq(self, node: NodeProto) -> bool:
        return node.op_type == "DequantizeLinear" and self.is_constant(node.input[0])

    def activation_tensors(self, include_weights: bool = False) -> list[str]:
        """Graph inputs then every node output in topological (file) order, constants left out."""
        out = list(self.input_names)
        for node in self.model.graph.node:
            if node.op_type == "Constant":
                continue
            if not include_weights and node.op_type == "DequantizeLinear" and self.is_constant(node.input[0]):
                continue
            out.extend(o for o in node.output if o)
        return out

    def qdq_output(self, name: str) -> str | None:
        """If ``name`` feeds ``QuantizeLinear -> DequantizeLinear``, that DQ's output, else None."""
        for q in self.consumers.get(name, []):
            if q.op_type != "QuantizeLinear":
                continue
            for dq in self.consumers.get(q.output[0], []):
                if dq.op_type == "DequantizeLinear":
                    return dq.output[0]
        return None

    def float_source(self, name: str) -> str:
        """Walk back through DQ <- Q to the float tensor that was quantized."""
        node = self.producer.get(name)
        if node is not None and node.op_type == "DequantizeLinear":
            q = self.producer.get(node.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                return q.input[0]
        return name


@dataclass
class TensorMatch:
    """One float tensor and its INT8-model counterpart; ``how`` says which rule matched them."""

    float_name: str
    quant_name: str
    float_index: int
    quant_index: int
    how: str  # "qdq" (X -> Q -> DQ), "same" (tensor kept float), "consumer" (DQ feeding the same slot)
    op_type: str  # the float producer's op type


@dataclass
class MatchResult:
    matches: list[TensorMatch]
    unmatched: list[str]
    total: int


def match_tensors(
    float_model: onnx.ModelProto, quant_model: onnx.ModelProto, *, strict: bool = True
) -> MatchResult:
    """Pair every activation of the float model with its counterpart in the QDQ model.

    With ``strict`` the two graphs must correspond: every graph output and at least half of the
    tensors must match, else an :class:`OcrQuantError` lists a few unmatched tensors.
    """
    fv, qv = GraphView(float_model), GraphView(quant_model)
    f_tensors = [t for t in fv.activation_tensors() if t not in fv.input_names]
    q_order = {t: i for i, t in enumerate(qv.activation_tensors())}
    f_order = {t: i for i, t in enumerate(fv.activation_tensors())}
    matches: list[TensorMatch] = []
    unmatched: list[str] = []
    for name in f_tensors:
        found: tuple[str, str] | None = None
        if name in qv.producer and qv.producer[name].op_type not in QDQ_OPS:
            dq_out = qv.qdq_output(name)
            found = (dq_out, "qdq") if dq_out else (name, "same")
        elif name in qv.output_names:
            found = (name, "same")
        else:
            found = _match_by_consumer(name, fv, qv)
        if found is None or found[0] not in q_order:
            unmatched.append(name)
            continue
        op = op_label(fv, fv.producer[name]) if name in fv.producer else "input"
        matches.append(TensorMatch(name, found[0], f_order[name], q_order[found[0]], found[1], op))
    result = MatchResult(matches, unmatched, len(f_tensors))
    if strict:
        matched = {m.float_name for m in matches}
        missing_outputs = [o for o in fv.output_names if o not in matched]
        if missing_outputs or len(matches) < 0.5 * max(len(f_tensors), 1):
            few = ", ".join((missing_outputs + unmatched)[:5])
            raise OcrQuantError(
                f"the float and INT8 graphs do not correspond: {len(unmatched)} of {len(f_tensors)} float "
                f"tensors have no INT8 counterpart (e.g. {few}); "
                "pass the float model the INT8 one was made from"
            )
    return result


def op_label(view: GraphView, node: NodeProto) -> str:
    """The op type, with depthwise / grouped convolutions told apart (they quantize very differently)."""
    if node.op_type != "Conv":
        return node.op_type
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    if group <= 1:
        return "Conv"
    w = view.initializers.get(node.input[1]) if len(node.input) > 1 else None
    return "Conv/dw" if w is not None and len(w.dims) > 1 and w.dims[1] == 1 else f"Conv/g{group}"


def _match_by_consumer(name: str, fv: GraphView, qv: GraphView) -> tuple[str, str] | None:
    for consumer in fv.consumers.get(name, []):
        q_node = qv.nodes_by_name.get(consumer.name) if consumer.name else None
        if q_node is None or q_node.op_type != consumer.op_type:
            continue
        for slot, inp in enumerate(consumer.input):
            if inp == name and slot < len(q_node.input):
                cand = q_node.input[slot]
                if cand in qv.producer and qv.producer[cand].op_type == "DequantizeLinear":
                    return cand, "consumer"
    return None


def tensor_elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor we can learn (shape inference fills what the file lacks)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # inference is best effort: the runtime fills the rest
        inferred = model
    g = inferred.graph
    types: dict[str, int] = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for t in g.initializer:
        types[t.name] = t.data_type
    return types


def with_outputs(
    model: onnx.ModelProto, names: list[str], types: dict[str, int] | None = None
) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs are ``names`` (intermediate tensors exposed)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    types = types or {}
    for name in names:
        if name in types:
            m.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
        else:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return m


@contextlib.contextmanager
def float_reference(float_model: Path, quant_model: Path) -> Iterator[Path]:
    """The float graph an INT8 model of ocrquant's was made from: the ``<stem>.float.onnx`` the
    quantizer saved beside it when present and intact, else a re-preparation of ``float_model``.

    The quantizer prepares the float model before it inserts Q/DQ (HardSwish fused from
    Add/Clip/Mul/Div, scalar affines folded into convolutions, the target's layout rewrites), so about
    half the tensors of the user's float file have no counterpart in the INT8 graph and layer matching
    refused ocrquant's own cls model. When the INT8 model's sidecar records that preparation, the same
    preparation of ``float_model`` (in a scratch folder) is the reference; otherwise ``float_model``.
    """

    side = read_sidecar(quant_model)
    saved = float_reference_path(quant_model)
    recorded = side.get("float_reference_sha256")
    if recorded and saved.is_file() and sha256_file(saved) == recorded:
        # the very float model that was quantized: after HS-CLE's per-channel rescaling too, which a
        # re-preparation of the user's float file cannot reproduce
        log.info("comparing against the float model the quantizer used: %s", saved)
        yield saved
        return
    settings = side.get("settings") or {}
    if "fuse_hardswish" not in settings:
        yield float_model
        return
    rewrites = tuple((settings.get("target") or {}).get("prepare_rewrites") or ())
    with scratch_dir("reference") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        prepare_model(
            float_model, prepared, fuse_hardswish=bool(settings["fuse_hardswish"]), rewrites=rewrites
        )
        yield prepared
