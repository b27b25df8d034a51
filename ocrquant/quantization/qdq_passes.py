"""Graph rewrites a target profile runs on the written QDQ model (``TargetProfile.qdq_passes``).

A pass edits the final model only where the edit is exact: the rewritten model computes the same
integers as the one onnxruntime's quantizer wrote. The pipeline runs them last, after the algorithms
that measure the written model (bias correction) and never on the models the analysis tools edit
(``QuantConfig.graph_passes``). Each pass returns a record ``{tensor: {...}}`` of what it changed, which
goes to the sidecar.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ocrquant.onnx_qdq import fold_constant_qdq
from ocrquant.quantization.graph import (
    consumers,
    initializers,
    nearest_upsample_factor,
    producers,
    remove_nodes,
)


@dataclass(frozen=True)
class QDQPass:
    name: str
    rewrite: Callable[[onnx.ModelProto], dict[str, dict[str, Any]]]


QDQ_PASSES: dict[str, QDQPass] = {}
log = logging.getLogger("ocrquant")


def register_qdq_pass(p: QDQPass) -> QDQPass:
    QDQ_PASSES[p.name] = p
    return p


# --------------------------------------------------------------------------- fold_scalar_mul
# PaddleOCR's HardSwish is x * clip(x + 3, 0, 6) / 6, and the prepared graph keeps the "/6" as a Mul by
# the constant 1/6 (decomposed HardSwish runs as integer Add/Mul on ort-cpu, see targets.py). In QDQ
# form that Mul is a whole QLinearMul kernel plus a requantization, yet a Mul by a positive scalar only
# relabels the integer grid: q * s * c = q * (s * c). Calibration gives the Mul's output the range c
# times its input's (min/max, percentile and MSE all scale with the data), so the Q after it has scale
# s_out = s_in * c (1 + d) and the input's zero point; it then maps each code k = q - z to
# round(k (1 + d)) = k, exactly, while |k| (1 + d - 1) < 1/2, i.e. |d| < 1 / (2 (qmax - qmin)) (uint8:
# 0.2 %). Where that holds, the rewrite deletes the Mul and that Q, and the DequantizeLinears after it
# read the input's integers directly with the scale s_out they already have: the same integers, one
# kernel fewer. Measured on PP-OCRv3: det 20 and cls 9 of 9 such Muls fold, rec 5 of 7
# (two of its MSE ranges differ by 1.4 % and 21 %: left as they are).
def _positive_scalar(value: np.ndarray | None) -> float | None:
    if value is None or value.size != 1 or value.dtype.kind != "f":
        return None
    c = float(value.reshape(-1)[0])
    return c if np.isfinite(c) and c > 0 else None


def _param(inits: dict[str, onnx.TensorProto], node: onnx.NodeProto, slot: int) -> np.ndarray | None:
    """A Q/DQ node's constant input ``slot`` (1 scale, 2 zero point); None when absent or computed."""
    name = node.input[slot] if len(node.input) > slot else ""
    return numpy_helper.to_array(inits[name]) if name in inits else None


def _dq_constant(dq: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> np.ndarray | None:
    """The float value of a DequantizeLinear of a constant (None if any input is computed)."""
    if any(name and name not in inits for name in dq.input):
        return None
    q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
    zp = _param(inits, dq, 2)
    zero = 0.0 if zp is None else zp.astype(np.float64)
    return ((q - zero) * _param(inits, dq, 1).astype(np.float64)).astype(np.float32)


def _same_grid(a: tuple[np.ndarray | None, ...], b: tuple[np.ndarray | None, ...], c: float) -> bool:
    """Whether requantizing from grid ``a`` stretched by ``c`` to grid ``b`` (scale, zero point) is the
    identity on every code: per-tensor, one zero point, scales within 1 / (2 (qmax - qmin))."""
    (s_a, z_a), (s_b, z_b) = a, b
    if s_a is None or s_b is None or s_a.size != 1 or s_b.size != 1:
        return False
    if z_a is None or z_b is None or z_a.dtype != z_b.dtype or z_a.tolist() != z_b.tolist():
        return False
    info = np.iinfo(z_a.dtype)
    tolerance = 0.5 / (int(info.max) - int(info.min)) * 0.5  # half the bound: float32 products round too
    return abs(float(s_b) / (float(s_a) * c) - 1.0) < tolerance


def rewrite_scalar_mul(qmodel: onnx.ModelProto) -> dict[str, dict[str, Any]]:
    """Remove DQ -> Mul(c) -> Q where requantizing is the identity (:func:`_same_grid`)."""
    inits = initializers(qmodel)
    prod, cons = producers(qmodel), consumers(qmodel)
    outputs = {o.name for o in qmodel.graph.output}
    dead: set[int] = set()
    record: dict[str, dict[str, Any]] = {}
    for node in qmodel.graph.node:
        if node.op_type != "Mul" or len(node.input) != 2 or node.output[0] in outputs:
            continue
        dqs = [prod.get(i) for i in node.input]
        if any(d is None or d.op_type != "DequantizeLinear" for d in dqs):
            continue
        qs = cons.get(node.output[0], [])
        if not qs or any(q.op_type != "QuantizeLinear" or q.output[0] in outputs for q in qs):
            continue
        readers = [r for q in qs for r in cons.get(q.output[0], [])]
        if not readers or any(r.op_type != "DequantizeLinear" or r.output[0] in outputs for r in readers):
            continue
        for data, const in ((0, 1), (1, 0)):
            c = _positive_scalar(_dq_constant(dqs[const], inits))
            dq_x = dqs[data]
            if c is None or dq_x.input[0] in inits:
                continue
            grid = (_param(inits, dq_x, 1), _param(inits, dq_x, 2))
            if not all(_same_grid(grid, (_param(inits, q, 1), _param(inits, q, 2)), c) for q in qs):
                break
            for reader in readers:
                reader.input[0] = dq_x.input[0]  # keeps its own scale (= s_in * c) and zero point
            dead.update(id(n) for n in [node, *qs])
            dead.update(id(dq) for dq in dqs if len(cons.get(dq.output[0], [])) == 1)
            q_x = prod.get(dq_x.input[0])
            source = q_x.input[0] if q_x is not None and q_x.op_type == "QuantizeLinear" else dq_x.input[0]
            scale, zero = _param(inits, readers[0], 1), _param(inits, readers[0], 2)
            record[node.output[0]] = {
                "node": node.name,
                "factor": c,
                "grid_of": source,
                "scale": float(scale),
                "zero_point": 0 if zero is None else int(zero),
            }
            break
    if dead:
        remove_nodes(qmodel, dead)
    return record


register_qdq_pass(QDQPass("fold_scalar_mul", rewrite_scalar_mul))

# --------------------------------------------------------------------------- fold_constant_qdq
# A Q/DQ pair on a constant behind a shape-dependent Reshape (PP-OCRv3 rec's LayerNorm weights and
# biases) stops the file compiling in plain OpenVINO (ocrquant.onnx_qdq says why). Folded to the
# fake-quantized constant it holds the same values. Measured on PP-OCRv3 rec's INT8 model: 10 pairs
# folded, onnxruntime's output unchanged (largest difference 0.0), and
# `python -c "import openvino as ov; ov.Core().compile_model('rec.int8.onnx', 'CPU')"` throws without
# the pass and compiles with it (tests/test_analysis_chain.py compiles every model ocrquant writes).
register_qdq_pass(QDQPass("fold_constant_qdq", fold_constant_qdq))


# --------------------------------------------------------------------------- align_channels
# onnxruntime's x86 integer convolution has two paths. The fast one (MLAS "ConvSym": indirect
# convolution with the requantization fused, AVX2 / AVX512-VNNI kernels) takes a depthwise Conv only
# when its channel count is a multiple of 16, and a dense one only with input and output channels
# multiples of 4 (at least 16 outputs); anything else falls back to im2col + a generic GEMM, or for
# depthwise to MLAS's generic depthwise loop, each followed by a separate requantization. PP-OCRv3 cls
# (MobileNetV3 x0.35) has depthwise convs of 8, 24, 40, 88, 104 and 200 channels; the 200-channel 5x5
# ones took 555 us each at batch 8 (1 thread) against 86 us in FP32 (MLAS's NCHWc layout pads channels
# to 16 by itself), which is why INT8 cls ran no faster than FP32. This pass pads the channel group a
# depthwise Conv runs in (its input and output and the element-wise ops on them) with zero channels:
# the Convs that write the group get zero filters and zero biases for the new outputs, the Convs that
# read it zero weights for the new inputs, and every op in between acts per channel, so the new
# channels never reach a real one and the real channels' integers are unchanged. A group is padded
# only when every tensor in it is produced and read by such ops (Q/DQ per tensor, element-wise ops
# with scalar constants, pools) or by Convs; anything else (Reshape, Concat, a graph output, a
# per-channel constant) leaves it as it is.
CHANNEL_ALIGN = 16
_CHANNELWISE_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Clip",
        "Relu",
        "HardSigmoid",
        "HardSwish",
        "Sigmoid",
        "LeakyRelu",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "MaxPool",
        "AveragePool",
        "Identity",
    }
)


class _Groups:
    """Union-find over activation tensor names: tensors that share one channel axis."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, name: str) -> str:
        self.parent.setdefault(name, name)
        while self.parent[name] != name:
            self.parent[name] = self.parent[self.parent[name]]
            name = self.parent[name]
        return name

    def union(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


@dataclass
class _ConvWeights:
    """Where a Conv's filter and bias live: (initializer, scale, zero point) names; the scale and zero
    point are empty for a float Conv whose filter is an initializer itself."""

    node: onnx.NodeProto
    weight: tuple[str, str, str]
    bias: tuple[str, str, str] | None
    shape: tuple[int, ...]
    group: int

    @property
    def depthwise(self) -> bool:
        return self.group > 1 and self.group == self.shape[0] and self.shape[1] == 1


def _constant_source(name: str, inits: dict[str, onnx.TensorProto], prod: dict[str, onnx.NodeProto]):
    """(initializer, scale, zero point) behind a constant input: the initializer itself or the one a
    DequantizeLinear reads; None when the input is computed."""
    if name in inits:
        return name, "", ""
    dq = prod.get(name)
    if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
        slots = [*dq.input[1:3], "", ""][:2]
        if all(not s or s in inits for s in slots):
            return dq.input[0], slots[0], slots[1]
    return None


def _conv_weights(node, inits, prod) -> _ConvWeights | None:
    weight = _constant_source(node.input[1], inits, prod)
    if weight is None:
        return None
    bias = _constant_source(node.input[2], inits, prod) if len(node.input) > 2 and node.input[2] else None
    if len(node.input) > 2 and node.input[2] and bias is None:
        return None
    shape = tuple(inits[weight[0]].dims)
    group = int(next((a.i for a in node.attribute if a.name == "group"), 1))
    return _ConvWeights(node, weight, bias, shape, group)


def _is_constant(name: str, inits, prod) -> bool:
    return name in inits or _constant_source(name, inits, prod) is not None


def _pad_array(
    inits: dict[str, onnx.TensorProto], name: str, axis: int, width: int, size: int, fill: float | None
) -> None:
    """Grow initializer ``name`` along ``axis`` from ``width`` to ``size`` with ``fill``, or with copies
    of its last entry when ``fill`` is None (in place)."""
    if not name:
        return
    value = numpy_helper.to_array(inits[name])
    if value.ndim <= axis or value.shape[axis] != width:
        return  # a per-tensor scale or zero point serves the new channels as it is
    widths = [(0, 0)] * value.ndim
    widths[axis] = (0, size - value.shape[axis])
    if fill is None:
        padded = np.pad(value, widths, mode="edge")
    else:
        padded = np.pad(value, widths, constant_values=np.array(fill, dtype=value.dtype))
    inits[name].CopyFrom(numpy_helper.from_array(padded, name))


def _pad_source(inits, source: tuple[str, str, str], width: int, size: int) -> None:
    """Grow a filter or bias (and its per-channel scale and zero point) along its output axis."""
    data, scale, zero = source
    _pad_array(inits, data, 0, width, size, 0)
    # The new filters are all zero, so any positive scale would do; onnxruntime's QDQ Conv fusion wants
    # each bias scale to be the input's scale times the filter's, so both repeat their last channel's.
    _pad_array(inits, scale, 0, width, size, None)
    _pad_array(inits, zero, 0, width, size, 0)


@dataclass
class ChannelGroup:
    """Tensors that share one channel axis: the Convs that write it, read it or run inside it
    (depthwise), the channel counts they imply, and whether an op that is not channel-wise (or a
    graph input / output) touches it."""

    tensors: set[str] = field(default_factory=set)
    channels: set[int] = field(default_factory=set)
    writers: list[_ConvWeights] = field(default_factory=list)
    readers: list[_ConvWeights] = field(default_factory=list)
    depthwise: list[_ConvWeights] = field(default_factory=list)
    blocked_by: set[str] = field(default_factory=set)  # what keeps the group as it is

    @property
    def blocked(self) -> bool:
        return bool(self.blocked_by)

    @property
    def convs(self) -> list[_ConvWeights]:
        return self.writers + self.depthwise + self.readers


def _channelwise(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], prod) -> bool:
    """Whether ``node`` acts on each channel alone: a channel-wise op type, one output, only scalar
    constants, per-tensor quantization parameters."""
    if node.op_type not in _CHANNELWISE_OPS or len([o for o in node.output if o]) != 1:
        return False
    for name in node.input:
        source = _constant_source(name, inits, prod) if name else None
        if source is not None and numpy_helper.to_array(inits[source[0]]).size != 1:
            return False
    if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        return all(numpy_helper.to_array(inits[s]).size == 1 for s in node.input[1:3] if s in inits)
    return True


def channel_groups(qmodel: onnx.ModelProto) -> list[ChannelGroup]:
    """Split the model's activations into channel groups (union-find through channel-wise ops and
    depthwise Convs; a dense Conv ends one group and starts another)."""
    inits = initializers(qmodel)
    prod, cons = producers(qmodel), consumers(qmodel)
    union = _Groups()
    blocked: dict[str, str] = {i.name: "a graph input" for i in qmodel.graph.input}
    blocked.update({o.name: "a graph output" for o in qmodel.graph.output})
    convs: list[tuple[_ConvWeights, str, str]] = []

    def shared(node: onnx.NodeProto) -> bool:
        """Whether a filter or bias of ``node`` (or its DequantizeLinear) is read elsewhere too:
        padding it for one Conv would change the other."""
        names = [n for n in node.input[1:3] if n]
        names += [i for n in names if n in prod for i in prod[n].input]
        return any(len(cons.get(n, [])) > 1 for n in names)

    for node in qmodel.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[0] in inits:
            continue  # a constant's own Q/DQ: judged where the constant is read
        data_in = [i for i in node.input if i and not _is_constant(i, inits, prod)]
        outs = [o for o in node.output if o]
        w = _conv_weights(node, inits, prod) if node.op_type == "Conv" else None
        reason = f"{node.op_type} {node.name}".strip()
        if w is not None and len(w.shape) == 4 and len(data_in) == len(outs) == 1:
            if shared(node):
                reason += " (weights shared with another node)"
            elif w.depthwise or w.group == 1:
                if w.depthwise:
                    union.union(data_in[0], outs[0])
                convs.append((w, data_in[0], outs[0]))
                continue
            else:
                reason += " (grouped)"
        elif node.op_type != "Conv" and _channelwise(node, inits, prod):
            for name in data_in:
                union.union(name, outs[0])
            continue
        for name in data_in + outs:
            blocked.setdefault(name, reason)

    groups: dict[str, ChannelGroup] = {}

    def group(name: str) -> ChannelGroup:
        return groups.setdefault(union.find(name), ChannelGroup())

    for name in list(union.parent) + [n for w in convs for n in w[1:]] + list(blocked):
        g = group(name)
        g.tensors.add(name)
        if name in blocked:
            g.blocked_by.add(blocked[name])
    for w, x_name, y_name in convs:
        if w.depthwise:
            group(y_name).depthwise.append(w)
        else:
            group(x_name).readers.append(w)
            group(x_name).channels.add(w.shape[1])
            group(y_name).writers.append(w)
        group(y_name).channels.add(w.shape[0])
    return list(groups.values())


def slow_depthwise(qmodel: onnx.ModelProto, align: int = CHANNEL_ALIGN) -> list[tuple[str, int]]:
    """(node, channels) of every depthwise Conv whose channel count is not a multiple of ``align``:
    in a quantized model onnxruntime's x86 CPU provider runs those on its slower integer path."""
    inits, prod = initializers(qmodel), producers(qmodel)
    out = []
    for node in qmodel.graph.node:
        w = _conv_weights(node, inits, prod) if node.op_type == "Conv" else None
        if w is not None and w.depthwise and w.group % align:
            out.append((node.name or node.output[0], w.group))
    return out


def rewrite_align_channels(qmodel: onnx.ModelProto, align: int = CHANNEL_ALIGN) -> dict[str, dict[str, Any]]:
    """Pad every channel group that a depthwise Conv runs in, whose width is not a multiple of
    ``align`` and that only Convs and channel-wise ops touch (see the comment above); returns one
    record per padded group, keyed by the first tensor written into it.

    Only depthwise groups: that is where the kernel switch pays. Padding the dense-only groups too
    (SE bottlenecks, det's 24-channel FPN maps) bought no Conv time and cost element-wise time on the
    new channels: det 1 thread, 544x960, QLinearConv 28.8 ms unpadded, 26.5 all groups, 26.4
    depthwise groups; QLinearMul 4.16, 4.51, 4.16 ms; cls at batch 8 the same within 1 %."""
    inits = initializers(qmodel)
    record: dict[str, dict[str, Any]] = {}
    retyped: set[str] = set()
    for g in channel_groups(qmodel):
        if not g.depthwise or all(c % align == 0 for c in g.channels):
            continue
        if g.blocked or len(g.channels) != 1:
            why = sorted(g.blocked_by) or [f"Convs disagree on its width: {sorted(g.channels)}"]
            log.warning(
                "align_channels: the %s-channel group of depthwise %s left as it is (%s): onnxruntime "
                "runs it on its slower integer path",
                "/".join(map(str, sorted(g.channels))), g.depthwise[0].node.name, "; ".join(why[:3]),
            )  # fmt: skip
            continue
        (width,) = g.channels
        size = -(-width // align) * align
        for w in g.writers + g.depthwise:
            _pad_source(inits, w.weight, width, size)
            if w.bias is not None:
                _pad_source(inits, w.bias, width, size)
        for w in g.depthwise:
            next(a for a in w.node.attribute if a.name == "group").i = size
        for w in g.readers:
            _pad_array(inits, w.weight[0], 1, width, size, 0)
        retyped |= g.tensors | {n for w in g.convs for n in w.node.input[1:3]}
        record[(g.writers or g.depthwise)[0].node.output[0]] = {
            "channels": width,
            "padded_to": size,
            "writers": [w.node.name for w in g.writers],
            "depthwise": [w.node.name for w in g.depthwise],
            "readers": [w.node.name for w in g.readers],
        }
    if retyped:  # their shapes changed: shape inference (or the runtime) works them out again
        keep = [vi for vi in qmodel.graph.value_info if vi.name not in retyped]
        del qmodel.graph.value_info[:]
        qmodel.graph.value_info.extend(keep)
    return record


register_qdq_pass(QDQPass("align_channels", rewrite_align_channels))


# --------------------------------------------------------------------------- nhwc_upsample
# onnxruntime runs a QDQ graph's convolutions as NHWC QLinearConvs and moves the layout-agnostic ops
# between them to NHWC too, Resize included (its scales become [1, k, k, 1]). Its uint8 nearest Resize
# has a fast path only for NCHW by 2; in NHWC it copies element by element, while Expand copies whole
# C-byte rows: a 96-channel 68x120 map by 2 (PP-OCRv3 det's largest, at 544x960) between two 1x1
# QLinearConvs took 3.68 ms with the Resize, 1.42 ms with the Expand, convolutions included
# (``python benchmarks/layout_ops.py``, 2-core AMX Xeon). A nearest (floor, asymmetric) upsample by k
# is a repeat, so DQ -> Resize -> Q with one grid on both sides (onnxruntime drops such pairs and
# resizes the integers) becomes, on the integers themselves,
#   Transpose(NCHW -> NHWC) -> Unsqueeze(2, 4) -> Expand(1, 1, k, 1, k, 1) -> Reshape(N, kH, kW, C)
#   -> Transpose(NHWC -> NCHW)
# the same integers, element for element, and onnxruntime cancels the Transposes against the ones its
# NHWC layout puts around the neighbouring QLinear ops. Not where the upsample feeds an Add (an FPN's
# top-down path): onnxruntime's first optimisation level, which runs before its QDQ fusion, moves the
# closing Transpose onto the Add's input (the Add's other input is still an NCHW Conv there) and its
# NHWC layout pass later leaves it: 9 Transposes stayed in PP-OCRv3 det's optimised graph. So such an
# Add runs in NHWC as written, its other input's integers transposed in and its output's out (each
# cancelled by the layout pass), and an upsample reading that output reads its NHWC bytes directly.
# The runtime still sees a valid NCHW ONNX graph; other runtimes run the Transposes as written, so
# only the ort-cpu target asks for the pass (docs/quantization.md has what it gives and costs where;
# ``ocrquant profile --compare`` on a det model shows Resize's time going).
def _nearest_factor(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> int | None:
    """k when ``node`` is a nearest upsample by an integer k >= 2 (:func:`nearest_upsample_factor`)."""
    k = nearest_upsample_factor(node, inits)
    return int(k) if k is not None and k >= 2 and k == int(k) else None


def _grid(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> tuple[Any, ...] | None:
    """A Q/DQ node's (scale, zero point, its type) when both are per-tensor constants."""
    scale, zero = _param(inits, node, 1), _param(inits, node, 2)
    if scale is None or scale.size != 1 or (zero is not None and zero.size != 1):
        return None
    return (
        float(scale.reshape(-1)[0]),
        0 if zero is None else int(zero.reshape(-1)[0]),
        str(getattr(zero, "dtype", "")),
    )


TO_NHWC, TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]


@dataclass
class _Edit:
    """Nodes to put in place of, before or after existing ones, and the ones to delete."""

    replace: dict[int, list[onnx.NodeProto]] = field(default_factory=dict)
    before: dict[int, list[onnx.NodeProto]] = field(default_factory=dict)
    after: dict[int, list[onnx.NodeProto]] = field(default_factory=dict)
    dead: set[int] = field(default_factory=set)

    def apply(self, model: onnx.ModelProto) -> None:
        nodes: list[onnx.NodeProto] = []
        for old in model.graph.node:
            nodes += self.before.get(id(old), [])
            if id(old) in self.replace:
                nodes += self.replace[id(old)]
            elif id(old) not in self.dead:
                nodes.append(old)
            nodes += self.after.get(id(old), [])
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        remove_nodes(model, set())  # the initializers only the deleted nodes read


def _upsample_chain(
    name: str, source: str, nhwc: str | None, k: int, out: str, model: onnx.ModelProto
) -> list[onnx.NodeProto]:
    """The integer upsample of ``source`` (NCHW) by ``k`` into ``out``: NHWC bytes when ``nhwc`` names
    ``source`` already transposed (an Add the pass moved to NHWC wrote it), else transposed here."""
    t = f"{name}_nhwc"
    axes, times, by_k = f"{t}_axes", f"{t}_times", f"{t}_by_k"
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([2, 4], np.int64), axes),
            numpy_helper.from_array(np.array([1, 1, k, 1, k, 1], np.int64), times),
            numpy_helper.from_array(np.array([1, k, k, 1], np.int64), by_k),
        ]
    )
    chain = [] if nhwc else [helper.make_node("Transpose", [source], [t], name=t, perm=TO_NHWC)]
    src = nhwc or t
    return chain + [
        helper.make_node("Unsqueeze", [src, axes], [f"{t}_6d"], name=f"{t}_6d"),
        helper.make_node("Expand", [f"{t}_6d", times], [f"{t}_repeat"], name=f"{t}_repeat"),
        helper.make_node("Shape", [src], [f"{t}_shape"], name=f"{t}_shape"),
        helper.make_node("Mul", [f"{t}_shape", by_k], [f"{t}_up_shape"], name=f"{t}_up_shape"),
        helper.make_node("Reshape", [f"{t}_repeat", f"{t}_up_shape"], [out], name=f"{t}_up"),
    ]


def _nhwc_add(
    readers: list[onnx.NodeProto],
    prod: dict[str, onnx.NodeProto],
    cons: dict[str, list[onnx.NodeProto]],
    inits: dict[str, onnx.TensorProto],
) -> list[tuple[onnx.NodeProto, onnx.NodeProto, onnx.NodeProto, onnx.NodeProto]] | None:
    """Each reader DQ of an upsample with the Add it feeds, the Add's other input's DQ and the
    one Q after it, when every reader is such (the Add then runs in NHWC); else None."""
    found = []
    for dq in readers:
        adds = cons.get(dq.output[0], [])
        if dq.op_type != "DequantizeLinear" or len(adds) != 1 or adds[0].op_type != "Add":
            return None
        add = adds[0]
        other = [i for i in add.input if i != dq.output[0]]
        lat = prod.get(other[0]) if len(add.input) == 2 and len(other) == 1 else None
        qs = cons.get(add.output[0], [])
        if lat is None or lat.op_type != "DequantizeLinear" or lat.input[0] in inits:
            return None
        if len(qs) != 1 or qs[0].op_type != "QuantizeLinear" or _grid(lat, inits) is None:
            return None
        found.append((dq, add, lat, qs[0]))
    return found


def rewrite_nhwc_upsample(qmodel: onnx.ModelProto) -> dict[str, dict[str, Any]]:
    """Replace DQ -> nearest Resize by k -> Q (one grid) with an NHWC integer upsample, and an Add
    reading it with one in NHWC (see the comment above)."""
    inits = initializers(qmodel)
    prod, cons = producers(qmodel), consumers(qmodel)
    outputs = {o.name for o in qmodel.graph.output}
    edit = _Edit()
    nhwc_of: dict[str, str] = {}  # an NCHW integer tensor -> the same bytes in NHWC, where written
    backs: set[str] = set()  # the Transposes that take those back to NCHW
    retyped: set[str] = set()  # float tensors an Add moved to NHWC
    record: dict[str, dict[str, Any]] = {}
    for node in qmodel.graph.node:
        k = _nearest_factor(node, inits)
        dq = prod.get(node.input[0]) if k is not None else None
        if k is None or dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in inits:
            continue
        qs, grid = cons.get(node.output[0], []), _grid(dq, inits)
        if grid is None or not qs or node.output[0] in outputs:
            continue
        if any(
            q.op_type != "QuantizeLinear" or _grid(q, inits) != grid or q.output[0] in outputs for q in qs
        ):
            continue
        name, up = node.name or node.output[0], qs[0].output[0]
        readers = [r for q in qs for r in cons.get(q.output[0], [])]
        adds = _nhwc_add(readers, prod, cons, inits)
        out = f"{up}_nhwc" if adds else f"{name}_nhwc_up"
        chain = _upsample_chain(name, dq.input[0], nhwc_of.get(dq.input[0]), k, out, qmodel)
        if adds:
            for reader, add, lat, add_q in adds:
                retyped.update([reader.output[0], lat.output[0], add.output[0]])  # now NHWC
                reader.input[0] = out
                t_lat = f"{lat.input[0]}_nhwc_{add.name or add.output[0]}"
                edit.before[id(lat)] = [
                    helper.make_node("Transpose", [lat.input[0]], [t_lat], name=t_lat, perm=TO_NHWC)
                ]
                lat.input[0] = t_lat
                nchw = add_q.output[0]
                add_q.output[0] = nhwc_of[nchw] = f"{nchw}_nhwc"
                back = helper.make_node(
                    "Transpose", [add_q.output[0]], [nchw], name=f"{nchw}_nchw", perm=TO_NCHW
                )
                edit.after[id(add_q)] = [back]
                backs.add(back.name)
        else:
            chain.append(helper.make_node("Transpose", [out], [up], name=f"{name}_nhwc_nchw", perm=TO_NCHW))
            for q in qs[1:]:  # the same grid: every reader of another Q reads the one result
                for reader in cons.get(q.output[0], []):
                    reader.input[:] = [up if i == q.output[0] else i for i in reader.input]
        edit.replace[id(node)] = chain
        edit.dead.update(id(q) for q in qs)
        record[node.output[0]] = {"node": name, "factor": k, "nhwc_add": bool(adds), "scale": grid[0]}
    if record:
        edit.apply(qmodel)
        # The tensors now NHWC keep a rank-4 declaration without sizes. onnxruntime's layout pass
        # reads the declarations: with these deleted, PP-OCRv3 det kept 12 Transposes more than with
        # its Resizes; with no declaration in the whole model 6 more; with the rank alone none (a
        # test counts them on a small neck).
        for vi in qmodel.graph.value_info:
            dims = vi.type.tensor_type.shape.dim
            if vi.name in retyped and len(dims) == 4:
                for d in dims:
                    d.Clear()
        # what only the Resizes read: their DQs, then an Add's way back to NCHW that only such a DQ
        # read (the upsample reads the NHWC bytes now); onnxruntime would run them for nothing
        _drop_unread(qmodel, lambda n: n.op_type == "DequantizeLinear")
        _drop_unread(qmodel, lambda n: n.name in backs)
    return record


def _drop_unread(model: onnx.ModelProto, which: Callable[[onnx.NodeProto], bool]) -> None:
    """Delete the nodes ``which`` picks whose output no node and no graph output reads."""
    read = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    unread = [n for n in model.graph.node if which(n) and n.output[0] not in read]
    if unread:  # (the list keeps the nodes' wrappers, and so their ids, alive)
        remove_nodes(model, {id(n) for n in unread})


register_qdq_pass(QDQPass("nhwc_upsample", rewrite_nhwc_upsample))
