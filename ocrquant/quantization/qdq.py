"""Write the QDQ model: onnxruntime's graph rewrite, with every scale and zero point decided here.

onnxruntime's ``QDQQuantizer`` knows how to lay Q/DQ pairs out for its kernels (which inputs of which
op, shared pairs for Reshape/Concat, int32 biases, removable Relu/Clip). We use it for that layout only:
every activation, weight and constant gets an explicit ``scale``/``zero_point`` through
``TensorQuantOverrides``, computed from our calibrated ranges and the target profile (symmetry,
per-channel, power-of-two constraint, per-tensor dtype such as int16). After writing, the Q/DQ
parameters are read back from the saved graph into the sidecar, so the sidecar describes the model as
it is, not as we meant it to be.
"""

from __future__ import annotations

import fnmatch
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import QuantType
from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

from ocrquant.errors import OcrQuantError
from ocrquant.fileio import atomic_path, scratch_dir
from ocrquant.quantization.graph import (
    WEIGHTED_OPS,
    consumers,
    get_attr,
    initializers,
    is_quantized,
    producers,
    remove_nodes,
    weight_axis,
)
from ocrquant.quantization.qdq_passes import QDQ_PASSES
from ocrquant.quantization.saturation import PAIR_LAYOUT_OPS, pair_safe_scale
from ocrquant.quantization.targets import PASSTHROUGH_SCALE_NUDGE, QTYPES, TargetProfile, compute_scale_zp

log = logging.getLogger("ocrquant")

# Input slots that are not data (biases are quantized by ORT from the input and weight scales; the
# others are parameters that stay float).
NON_DATA_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (2,),
    "ConvTranspose": (2,),
    "Gemm": (2,),
    "Resize": (1, 2, 3),
    "Clip": (1, 2),
    "Slice": (1, 2, 3, 4),
    "Reshape": (1,),
    "Split": (1,),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
    "Gather": (1,),
    "Pad": (1, 2),
}
Q_OPS = ("QuantizeLinear", "DequantizeLinear")
OUTPUT_TAIL_OPS = ("Softmax", "Sigmoid", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten")


@dataclass
class QuantPlan:
    """Everything the writer needs besides the model: the decisions, made up front."""

    profile: TargetProfile
    ranges: dict[str, tuple[float, float]]  # calibrated activation ranges
    per_channel: bool | None = None  # None: the profile's choice
    exclude: list[str] = field(default_factory=list)  # node names, op types or glob patterns
    dtype_overrides: dict[str, str] = field(default_factory=dict)  # activation tensor -> "int16", ...
    observed: dict[str, tuple[float, float]] = field(default_factory=dict)  # min/max seen (sidecar)


@dataclass
class NodeSelection:
    quantize: list[str]
    float_reasons: dict[str, str]  # node name -> why it stays float


def ensure_node_names(model: onnx.ModelProto) -> None:
    """Give every node a unique name: ORT's quantizer addresses nodes by name."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def matches(node: onnx.NodeProto, patterns: list[str]) -> str | None:
    """The first pattern matching the node's name or op type (exact or glob), else None."""
    for p in patterns:
        if (
            node.name == p
            or node.op_type == p
            or fnmatch.fnmatchcase(node.name, p)
            or fnmatch.fnmatchcase(node.op_type, p)
        ):
            return p
    return None


def check_names(model: onnx.ModelProto, exclude: list[str], tensors: list[str], path: object) -> None:
    """Refuse an ``--exclude`` pattern that matches no node (name or op type) and an ``--int16`` name
    that is no tensor of the model: silently ignoring a misspelt layer quantizes what the user asked
    to keep."""

    for pattern in exclude:
        if not any(matches(node, [pattern]) for node in model.graph.node):
            raise OcrQuantError(f"--exclude '{pattern}' matches no node name or op type of the model", path)
    names = {t for node in model.graph.node for t in (*node.input, *node.output)}
    names |= {i.name for i in model.graph.input}
    for name in tensors:
        if name not in names:
            raise OcrQuantError(f"--int16 '{name}' is not a tensor of the model", path)


def select_nodes(model: onnx.ModelProto, profile: TargetProfile, exclude: list[str]) -> NodeSelection:
    quantize, reasons = [], {}
    tail = set() if profile.quantize_graph_outputs else output_tail(model)
    prod = producers(model)
    for node in model.graph.node:
        pattern = matches(node, exclude)
        if pattern is not None:
            reasons[node.name] = f"excluded by '{pattern}'"
        elif node.name in tail:
            reasons[node.name] = "feeds a model output directly (kept float)"
        elif node.op_type in profile.float_passthrough_ops and not _fed_by_conv(node, prod):
            reasons[node.name] = f"{node.op_type} after a non-Conv op runs faster in float on {profile.name}"
        elif node.op_type not in profile.op_types and node.op_type not in profile.boundary_ops:
            reasons[node.name] = f"{node.op_type} not quantized by target {profile.name}"
        else:
            quantize.append(node.name)
    for name in float_islands(model, set(quantize)):
        quantize.remove(name)
        reasons[name] = "between float nodes only: Q/DQ around it would round, with no integer kernel to gain"
    return NodeSelection(quantize, reasons)


def _fed_by_conv(node: onnx.NodeProto, prod: dict[str, onnx.NodeProto]) -> bool:
    """Whether a Conv computes ``node``'s data input, through activations the Conv's requantization
    absorbs (Relu, Clip): the case where onnxruntime runs a pass-through op in its NHWC integer kernel."""
    src = prod.get(node.input[0])
    while src is not None and src.op_type in ("Relu", "Clip"):
        src = prod.get(src.input[0])
    return src is not None and src.op_type == "Conv"


def float_islands(model: onnx.ModelProto, selected: set[str]) -> list[str]:
    """Selected weightless nodes in groups whose data inputs all come from float nodes (or the graph
    inputs) and whose outputs only float nodes read. A group is a connected set of selected
    weightless nodes: PP-OCRv6 det's head, ConvTranspose -> bias Add -> Relu -> ConvTranspose, where
    the Add and the Relu read each other and the target runs both ConvTransposes in float.

    Quantizing such a group buys no integer kernel (every input needs a Q, every output a DQ) and puts
    8-bit roundings on the tensors around it; here those are the probability map's logits, and on
    PP-OCRv6 small det the pair costs a Q and a DQ over a 24x368x656 tensor, 1.8 ms per 736x1312
    image (``ocrquant profile``). Nodes fed only by constants count as islands once their readers are
    float. Weighted nodes (Conv, MatMul) have integer kernels and are never islands.
    """
    prod = producers(model)
    cons = consumers(model)
    constant = {i.name for i in model.graph.initializer}
    for node in model.graph.node:  # tensors computed from constants only
        if all(not i or i in constant for i in node.input):
            constant.update(node.output)
    outputs = {o.name for o in model.graph.output}
    candidates = [n for n in model.graph.node if n.name in selected and n.op_type not in WEIGHTED_OPS]
    parent = {n.name: n.name for n in candidates}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for node in candidates:
        for i in node.input:
            src = prod.get(i)
            if i and i not in constant and src is not None and src.name in parent:
                parent[root(src.name)] = root(node.name)
    groups: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in candidates:
        groups[root(node.name)].append(node)
    islands: list[str] = []
    for members in groups.values():
        names = {n.name for n in members}
        fed = any(
            i in prod and prod[i].name in selected and prod[i].name not in names
            for n in members
            for i in n.input
            if i and i not in constant
        )
        readers = [r for n in members for o in n.output for r in cons.get(o, []) if r.name not in names]
        read = any(r.name in selected for r in readers)
        leaves = any(o in outputs for n in members for o in n.output)
        if not fed and not read and (readers or leaves):
            islands += [n.name for n in members]
    return islands


def output_tail(model: onnx.ModelProto) -> set[str]:
    """Nodes that only reshape or normalise a model output (Softmax, Reshape, ...), walking back from
    the outputs. ORT would give them Q/DQ with their input's or a fixed [0, 1] range, putting an 8-bit
    step on the model's output; leaving them float keeps the output exact at no speed cost.

    A classifier's bias ``Add`` (one constant operand) before them is part of the tail too: quantized,
    it rounds the logits twice (MatMul output, Add output) where CTC takes an argmax between close
    values; float, ORT runs ``DQ -> MatMul -> Add`` as one MatMulIntegerToFloat with the bias.
    PP-OCRv6 small rec (18710-class head, 40 x 120 x 18710 MatMul): 0.32 ms of QLinearAdd and
    DequantizeLinear per crop gone (``ocrquant profile``)."""
    prod = producers(model)
    cons = consumers(model)
    constant = {i.name for i in model.graph.initializer}
    tail: set[str] = set()
    frontier = [o.name for o in model.graph.output]
    while frontier:
        node = prod.get(frontier.pop())
        if node is None or node.name in tail:
            continue
        data = [i for i in node.input if i and i not in constant]
        bias_add = node.op_type == "Add" and len(data) == 1 and len(node.input) == 2
        if node.op_type not in OUTPUT_TAIL_OPS and not bias_add:
            continue
        tail.add(node.name)
        src = data[0] if bias_add else node.input[0] if node.input else None
        if src and len(cons.get(src, [])) == 1:
            frontier.append(src)
    return tail


def adjust_ranges(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]], selected: set[str]) -> dict:
    """The range rules ORT's quantizer applies, applied here so the sidecar records them:
    a Relu/Clip's input takes its output's range (the activation folds into the requantization) and a
    Softmax output spans [0, 1]."""
    out = dict(ranges)
    cons = consumers(model)
    for node in model.graph.node:
        if node.name not in selected:
            continue
        if (
            node.op_type in ("Relu", "Clip")
            and len(cons.get(node.input[0], [])) == 1
            and node.input[0] in out
            and node.output[0] in out
        ):
            out[node.input[0]] = out[node.output[0]]
        elif node.op_type == "Softmax" and node.output[0] in out:
            out[node.output[0]] = (0.0, 1.0)
    return out


def passthrough_ranges(
    model: onnx.ModelProto, ranges: dict[str, tuple[float, float]], selected: set[str], ops: tuple[str, ...]
) -> dict[str, tuple[float, float]]:
    """The output of a float pass-through op (``TargetProfile.float_passthrough_ops``) takes its
    input's range times ``1 + PASSTHROUGH_SCALE_NUDGE``: the same grid as far as any 8-bit code can
    tell (exact requantization, no second calibration of a tensor whose values are the input's), yet
    a scale the runtime sees as different, so it keeps the fast float op instead of fusing Q/DQ away."""

    out = dict(ranges)
    for node in model.graph.node:
        if node.op_type not in ops or node.name in selected:
            continue
        if node.input[0] in out and node.output[0] in out:
            lo, hi = out[node.input[0]]
            out[node.output[0]] = (lo * (1 + PASSTHROUGH_SCALE_NUDGE), hi * (1 + PASSTHROUGH_SCALE_NUDGE))
    return out


def float_output_matmuls(model: onnx.ModelProto, selected: set[str]) -> set[str]:
    """Outputs of quantized MatMul/Gemm read only by float nodes (the logits before a float Softmax).

    ORT runs DQ -> MatMul -> float as ``MatMulIntegerToFloat`` (QGemm with a float output for Gemm):
    integer arithmetic either way, so a Q/DQ pair there would only round the logits to 8 bits, where
    CTC and classification take an argmax between close values.
    """
    cons = consumers(model)
    out = set()
    for node in model.graph.node:
        if node.name in selected and node.op_type in ("MatMul", "Gemm"):
            readers = cons.get(node.output[0], [])
            if readers and all(r.name not in selected for r in readers):
                out.add(node.output[0])
    return out


def drop_qdq_pairs(qmodel: onnx.ModelProto, tensors: set[str]) -> None:
    """Remove the Q -> DQ pairs written on ``tensors``: their readers get the float tensor back.
    Initializers no node reads any more (the pairs' scales and zero points) are dropped too."""
    cons = consumers(qmodel)
    dead: set[int] = set()
    for node in qmodel.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in tensors:
            continue
        dqs = cons.get(node.output[0], [])
        if not dqs or any(d.op_type != "DequantizeLinear" for d in dqs):
            continue
        if any(out.name == dq.output[0] for dq in dqs for out in qmodel.graph.output):
            raise OcrQuantError(f"cannot drop the Q/DQ pair of {node.input[0]}: it is a model output")
        for dq in dqs:
            for reader in cons.get(dq.output[0], []):
                reader.input[:] = [node.input[0] if i == dq.output[0] else i for i in reader.input]
            dead.add(id(dq))
        dead.add(id(node))
    remove_nodes(qmodel, dead)


def _qtype(dtype: str):

    return {
        "int8": QuantType.QInt8,
        "int7": QuantType.QInt8,
        "int8p": QuantType.QInt8,
        "uint8": QuantType.QUInt8,
        "int16": QuantType.QInt16,
        "uint16": QuantType.QUInt16,
    }[dtype]


def build_overrides(
    model: onnx.ModelProto, plan: QuantPlan, selected: set[str], ranges: dict[str, tuple[float, float]]
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, Any]]]:
    """ORT ``TensorQuantOverrides`` with explicit scale/zero point for every tensor, and our own record."""
    prof = plan.profile
    per_channel = prof.per_channel if plan.per_channel is None else plan.per_channel
    inits = initializers(model)
    graph_inputs = {i.name for i in model.graph.input} - set(inits)
    overrides: dict[str, list[dict[str, Any]]] = {}
    planned: dict[str, dict[str, Any]] = {}
    for node in model.graph.node:
        if node.name not in selected:
            continue
        skip = NON_DATA_INPUTS.get(node.op_type, ())
        for slot, name in enumerate(node.input):
            if not name or slot in skip or name in overrides:
                continue
            if name in inits:
                if inits[name].data_type != onnx.TensorProto.FLOAT:
                    continue
                w = numpy_helper.to_array(inits[name]).astype(np.float64)
                is_weight = node.op_type in WEIGHTED_OPS and slot == 1
                dtype = prof.weight_dtype if is_weight else prof.activation_dtype
                if is_weight and dtype in NARROW_DTYPES and not _narrowed(node, inits, prof, graph_inputs):
                    dtype = "int8"
                symmetric = prof.weight_symmetric if is_weight else prof.activation_symmetric
                if is_weight and per_channel and w.ndim >= 2:
                    axis = weight_axis(node) % w.ndim
                    red = tuple(i for i in range(w.ndim) if i != axis)
                    scale, zp, dtype = _weight_scale_zp(node, w, red, dtype, symmetric, prof)
                    scale = _bias_safe_scale(model, node, inits, ranges, plan, scale)
                    overrides[name] = [
                        {
                            "axis": axis,
                            "quant_type": _qtype(dtype),
                            "scale": np.array(s, dtype=np.float32),
                            "zero_point": np.array(z, dtype=QTYPES[dtype][0]),
                        }
                        for s, z in zip(scale, zp, strict=True)
                    ]
                    planned[name] = {
                        "kind": "weight",
                        "axis": axis,
                        "dtype": dtype,
                        "scale": scale,
                        "zero_point": zp,
                    }
                else:
                    scale, zp, dtype = _weight_scale_zp(node, w, None, dtype, symmetric, prof)
                    overrides[name] = [
                        {
                            "quant_type": _qtype(dtype),
                            "scale": np.array(scale, dtype=np.float32),
                            "zero_point": np.array(zp, dtype=QTYPES[dtype][0]),
                        }
                    ]
                    planned[name] = {
                        "kind": "weight" if is_weight else "constant",
                        "dtype": dtype,
                        "scale": scale,
                        "zero_point": zp,
                    }
        for name in list(node.input) + list(node.output):
            if name and name not in inits and name in ranges and name not in overrides:
                dtype = plan.dtype_overrides.get(name, prof.activation_dtype)
                lo, hi = ranges[name]
                scale, zp = compute_scale_zp(lo, hi, dtype, prof.activation_symmetric, prof.constrain)
                overrides[name] = [
                    {
                        "quant_type": _qtype(dtype),
                        "scale": np.array(scale, dtype=np.float32),
                        "zero_point": np.array(zp, dtype=QTYPES[dtype][0]),
                    }
                ]
                planned[name] = {
                    "kind": "activation",
                    "dtype": dtype,
                    "scale": scale,
                    "zero_point": zp,
                    "range": [lo, hi],
                }
    return overrides, planned


# Weight dtypes that avoid the AVX2 u8 x s8 pair saturation (applied where ``_narrowed`` says).
NARROW_DTYPES = ("int7", "int8p")


def _weight_scale_zp(
    node: onnx.NodeProto,
    w: np.ndarray,
    red: tuple[int, ...] | None,
    dtype: str,
    symmetric: bool,
    prof: TargetProfile,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Scale, zero point and the dtype actually used for an initializer, per channel (``red``: the
    axes reduced per channel) or per tensor (``red`` None). ``int8p`` takes the pair-safe scale where
    the op's per-channel reduction layout is known, and the 7-bit grid (the safe bound without a
    layout) elsewhere."""
    if dtype == "int8p":
        if red is not None and symmetric and node.op_type in PAIR_LAYOUT_OPS:
            scale = prof.constrain(pair_safe_scale(w, node.op_type))
            return scale, np.zeros(scale.shape, dtype=np.int8), dtype
        dtype = "int7"
    scale, zp = compute_scale_zp(w.min(axis=red), w.max(axis=red), dtype, symmetric, prof.constrain)
    return scale, zp, dtype


def _narrowed(
    node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], prof: TargetProfile, graph_inputs: set[str]
) -> bool:
    """Whether a weighted op gets the profile's narrow (7-bit) weights.

    Depthwise convs never do: ORT runs them in an int32-accumulating kernel that cannot saturate.
    Scope "input" narrows only the ops reading a model input: the normalised image fills the whole u8
    grid in every channel, so pair sums of the first conv saturate; deeper activations are sparse and
    small. Measured (cls, first 1000 crops, fp32 0.778): int8 weights 0.752, 7-bit first conv only
    0.772, 7-bit every dense conv 0.771; rec (output SQNR vs fp32): 8-bit 16.3 dB, 7-bit dense 11.6 dB.
    """
    if _is_depthwise(node, inits):
        return False
    if prof.narrow_weight_scope == "input":
        return bool(node.input) and node.input[0] in graph_inputs
    return True


def _is_depthwise(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> bool:

    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
        return False
    group = get_attr(node, "group", 1)
    return group > 1 and inits[node.input[1]].dims[1] == 1


def _bias_safe_scale(
    model: onnx.ModelProto,
    node: onnx.NodeProto,
    inits: dict[str, onnx.TensorProto],
    ranges: dict[str, tuple[float, float]],
    plan: QuantPlan,
    scale: np.ndarray,
) -> np.ndarray:
    """Enlarge per-channel weight scales where the int32 bias (scale = input scale x weight scale)
    would overflow.

    Why: BN folding leaves near-dead channels with tiny weights but a large bias; their weight scale is
    tiny, and ``bias / (s_in * s_w)`` exceeds int32, so ORT clips the bias (measured on the PP-OCRv3
    rec model: a wrong constant added to a whole channel). A larger weight scale costs those near-zero
    weights nothing that matters. The input scale is computed exactly as the writer will compute it.
    """
    bias = node.input[2] if node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.input) > 2 else ""
    if not bias or bias not in inits or node.input[0] not in ranges:
        return scale
    b = np.abs(numpy_helper.to_array(inits[bias]).astype(np.float64)).reshape(-1)
    if b.shape != scale.shape:
        return scale
    prof = plan.profile
    dtype = plan.dtype_overrides.get(node.input[0], prof.activation_dtype)
    s_in, _ = compute_scale_zp(*ranges[node.input[0]], dtype, prof.activation_symmetric, prof.constrain)
    limit = float(s_in) * (2**31 - 1) / 2  # a factor 2 of headroom against rounding
    needed = (b / limit).astype(np.float32)
    return prof.constrain(np.maximum(scale, needed)) if np.any(needed > scale) else scale


def write_qdq_model(
    model: onnx.ModelProto,
    plan: QuantPlan,
    output: str | Path,
) -> dict[str, Any]:
    """Quantize ``model`` (the prepared float graph) per ``plan`` and write it atomically to ``output``.

    Returns the sidecar body (tensors, node counts, float nodes); the caller adds settings and writes it.
    """

    if is_quantized(model):
        raise OcrQuantError("model is already quantized; pass the float model")
    model = _copy(model)
    ensure_node_names(model)
    prof = plan.profile
    selection = select_nodes(model, prof, plan.exclude)
    selected = set(selection.quantize)
    ranges = adjust_ranges(model, plan.ranges, selected)
    ranges = passthrough_ranges(model, ranges, selected, prof.float_passthrough_ops)
    overrides, planned = build_overrides(model, plan, selected, ranges)
    tensors_range = TensorsData(
        CalibrationMethod.MinMax,
        {t: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for t, (lo, hi) in ranges.items()},
    )
    extra = {
        "TensorQuantOverrides": overrides,
        "ActivationSymmetric": prof.activation_symmetric,
        "WeightSymmetric": prof.weight_symmetric,
        # Our weight scales are final: ORT must not enlarge them to fit int32 biases.
        "QDQDisableWeightAdjustForInt32Bias": True,
        **prof.ort_extra_options,
    }
    if any(d in ("int16", "uint16") for d in plan.dtype_overrides.values()) or prof.activation_dtype in (
        "int16",
        "uint16",
    ):
        extra["UseQDQContribOps"] = True
    per_channel = prof.per_channel if plan.per_channel is None else plan.per_channel
    with scratch_dir("qdq") as tmp:
        staged = Path(tmp) / "float.onnx"
        onnx.save(model, str(staged))
        shaped = load_model_with_shape_infer(staged)
        quantizer = QDQQuantizer(
            shaped,
            per_channel,
            False,
            _qtype(prof.weight_dtype),
            _qtype(prof.activation_dtype),
            tensors_range,
            selection.quantize,
            [],
            list(prof.op_types + prof.boundary_ops),
            extra,
        )
        root = logging.getLogger()
        root_level = root.level
        root.setLevel(max(root_level, logging.WARNING))  # ORT logs one INFO line per unquantized tensor
        try:
            # ORT reads an empty node list as "quantize everything": with nothing selected, keep the model
            if selection.quantize:
                quantizer.quantize_model()
        except Exception as exc:  # an ORT rewrite failure is a bug/limitation to report in one line
            raise OcrQuantError(f"onnxruntime QDQ rewrite failed: {type(exc).__name__}: {exc}") from exc
        finally:
            root.setLevel(root_level)
        qmodel = quantizer.model.model
        if not prof.quantize_graph_outputs:
            drop_qdq_pairs(qmodel, float_output_matmuls(model, selected))
        quantizer.model.topological_sort()
        _restore_metadata(qmodel, model)
        try:
            onnx.checker.check_model(qmodel)
        except onnx.checker.ValidationError as exc:
            raise OcrQuantError(f"quantized model is invalid: {str(exc).splitlines()[0]}") from None
        with atomic_path(output) as out_tmp:
            onnx.save(qmodel, str(out_tmp))
    body = describe_qdq_model(qmodel, model, selection, ranges, plan.observed, prof.boundary_ops)
    _check_applied(planned, body["tensors"])
    return body


def apply_qdq_passes(path: str | Path, profile: TargetProfile, body: dict[str, Any]) -> None:
    """Run the profile's graph rewrites (``TargetProfile.qdq_passes``) on the written model at ``path``
    (atomically) and record them in the sidecar ``body``. The pipeline calls this last, after the
    algorithms that measure the written model (bias correction): they and the analysis tools that edit
    a pipeline model's Q/DQ nodes (sensitivity, the budget search) see the plain QDQ layout, and the
    rewrite, exact where it applies (same integers), only changes what ships."""
    passes = [QDQ_PASSES[name] for name in profile.qdq_passes]
    if not passes:
        return
    qmodel = onnx.load(str(path))
    body["graph_passes"] = {p.name: _record_pass(p.rewrite(qmodel), body["tensors"]) for p in passes}
    with atomic_path(path) as tmp:
        onnx.save(qmodel, str(tmp))


def _record_pass(record: dict[str, dict[str, Any]], tensors: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A pass's rewrites for the sidecar. A tensor folded into another's integer grid keeps its
    ``tensors`` entry, with the scale and zero point its readers' DequantizeLinears use."""
    for name, entry in record.items():
        if name in tensors and "grid_of" in entry:
            tensors[name].update(
                scale=entry["scale"],
                zero_point=entry["zero_point"],
                folded={k: entry[k] for k in ("node", "factor", "grid_of")},
            )
    return {"count": len(record), "rewrites": record}


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def _restore_metadata(qmodel: onnx.ModelProto, model: onnx.ModelProto) -> None:
    have = {p.key for p in qmodel.metadata_props}
    for p in model.metadata_props:
        if p.key not in have:
            qmodel.metadata_props.add(key=p.key, value=p.value)


def _dtype_name(elem_type: int) -> str:
    return {
        onnx.TensorProto.INT8: "int8",
        onnx.TensorProto.UINT8: "uint8",
        onnx.TensorProto.INT16: "int16",
        onnx.TensorProto.UINT16: "uint16",
        onnx.TensorProto.INT32: "int32",
    }.get(elem_type, str(elem_type))


def read_qdq_params(qmodel: onnx.ModelProto) -> dict[str, dict[str, Any]]:
    """Scale, zero point, dtype and axis of every quantized tensor, keyed by the float tensor's name.

    Activations are named by the QuantizeLinear input; initializers by the quantized initializer's
    name without ORT's ``_quantized`` suffix.
    """
    inits = initializers(qmodel)
    out: dict[str, dict[str, Any]] = {}
    for node in qmodel.graph.node:
        if node.op_type not in Q_OPS:
            continue
        scale = numpy_helper.to_array(inits[node.input[1]]) if node.input[1] in inits else None
        zp_name = node.input[2] if len(node.input) > 2 else ""
        zp = numpy_helper.to_array(inits[zp_name]) if zp_name in inits else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), None)
        if node.op_type == "QuantizeLinear":
            # ORT renames a quantized graph output's producer output to '<name>_QuantizeLinear_Input'
            name, kind = node.input[0].removesuffix("_QuantizeLinear_Input"), "activation"
        elif node.input[0] in inits:
            q = inits[node.input[0]]
            name = node.input[0].removesuffix("_quantized")
            kind = "bias" if q.data_type == onnx.TensorProto.INT32 else "weight"
        else:
            continue
        if name in out or scale is None:
            continue
        if zp is not None:
            dtype = str(zp.dtype)
        elif node.input[0] in inits:
            dtype = _dtype_name(inits[node.input[0]].data_type)
        else:
            dtype = "int8"
        entry = {
            "kind": kind,
            "dtype": dtype,
            "scale": scale.tolist(),
            "zero_point": zp.tolist() if zp is not None else 0,
        }
        if scale.ndim > 0 and scale.size > 1:
            entry["axis"] = 1 if axis is None else int(axis)
        if dtype in QTYPES and kind == "activation":
            _, qmin, qmax = QTYPES[dtype]
            z = float(np.asarray(entry["zero_point"]).reshape(-1)[0])
            s = float(scale.reshape(-1)[0])
            entry["representable_range"] = [(qmin - z) * s, (qmax - z) * s]
        out[name] = entry
    return out


def _runs_quantized(node: onnx.NodeProto, prod: dict[str, onnx.NodeProto]) -> bool:
    """Whether a node's data input (and, for Conv/MatMul/Gemm, its weight) comes from a DequantizeLinear:
    the pattern an integer kernel replaces."""
    data = [node.input[0]] if node.input else []
    if node.op_type in WEIGHTED_OPS and len(node.input) > 1:
        data.append(node.input[1])
    return bool(data) and all(n in prod and prod[n].op_type == "DequantizeLinear" for n in data)


def count_nodes(
    qmodel: onnx.ModelProto,
    float_model: onnx.ModelProto,
    selection: NodeSelection,
    boundary: tuple[str, ...] = (),
) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
    """Per op type of the float model: nodes quantized vs left float, and why each float node is float.

    A node counts as quantized when the plan selected it and, in the written graph, its inputs come
    from DequantizeLinear (see :func:`_runs_quantized`). Relu/Clip nodes the quantizer removed (folded
    into the preceding requantization) count as quantized.
    """
    prod = producers(qmodel)
    qnodes = {n.name: n for n in qmodel.graph.node if n.op_type not in Q_OPS}
    selected = set(selection.quantize)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"quantized": 0, "float": 0})
    reasons: dict[str, str] = {}
    for node in float_model.graph.node:
        qnode = qnodes.get(node.name)
        if node.name in selection.float_reasons:
            reasons[node.name] = selection.float_reasons[node.name]
        elif node.op_type in boundary:
            reasons[node.name] = "no integer kernel on the target: computes in float between Q/DQ"
        elif node.name in selected and (qnode is None or _runs_quantized(qnode, prod)):
            counts[node.op_type]["quantized"] += 1
            continue
        else:
            reasons[node.name] = "inputs not quantized (non-float input or no calibrated range)"
        counts[node.op_type]["float"] += 1
    return dict(sorted(counts.items())), reasons


def describe_qdq_model(
    qmodel: onnx.ModelProto,
    float_model: onnx.ModelProto,
    selection: NodeSelection,
    ranges: dict[str, tuple[float, float]],
    observed: dict[str, tuple[float, float]],
    boundary: tuple[str, ...] = (),
) -> dict[str, Any]:
    tensors = read_qdq_params(qmodel)
    for name, entry in tensors.items():
        if name in ranges:
            entry["calibrated_range"] = list(ranges[name])
        if name in observed:
            entry["observed_range"] = list(observed[name])
    counts, reasons = count_nodes(qmodel, float_model, selection, boundary)
    op_types = {n.name: n.op_type for n in float_model.graph.node}
    float_nodes = {name: {"op_type": op_types[name], "reason": why} for name, why in reasons.items()}
    return {"tensors": tensors, "node_counts": counts, "float_nodes": float_nodes}


def _check_applied(planned: dict[str, dict[str, Any]], written: dict[str, dict[str, Any]]) -> None:
    """Fail loudly if ORT wrote a scale other than ours for a tensor whose Q/DQ it created itself.

    Tensors ORT quantizes with a shared parameter (Reshape/Concat outputs take their input's) are not
    checked: there the input's parameters are, by design, the ones in the graph.
    """
    for name, plan in planned.items():
        got = written.get(name)
        if got is None or plan["kind"] != got["kind"]:
            continue
        ours = np.asarray(plan["scale"], dtype=np.float32).reshape(-1)
        theirs = np.asarray(got["scale"], dtype=np.float32).reshape(-1)
        if ours.shape == theirs.shape and not np.allclose(ours, theirs, rtol=1e-6, atol=0):
            log.debug(
                "tensor %s: written scale differs from the planned one (%s vs %s)", name, theirs[:3], ours[:3]
            )
