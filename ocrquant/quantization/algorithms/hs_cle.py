"""Exact cross-layer scale migration through HardSwish ("HS-CLE"), and the HardSwish range floor.

Why: in PP-OCRv3 backbones (MobileNetV3 / PP-LCNet) a ``Conv -> HardSwish -> Conv`` chain carries
channels whose ranges differ by 100x or more. Per-tensor activation quantization then spends the
whole int8 grid on the widest channel and rounds the narrow ones to a few levels: the plain INT8 rec
model reads nothing (accuracy 0.000: ``ocrquant quantize -m ppocrv3-rec --method min_max
--algorithms none`` then ``ocrquant eval``). Classic CLE (:mod:`.cle`) cannot help
because HardSwish is not positive-homogeneous (``HS(x / s) != HS(x) / s``).

It can be made exact with one per-channel multiply. ``HS(x) = x * clip(x + 3, 0, 6) / 6``; with
``y = x / s`` (``s > 0`` per channel)::

    HS(x) / s = y * clip(s * y + 3, 0, 6) / 6

So for each edge we divide the producer Conv's output channel ``c`` (weights and bias) by ``s_c``,
rewrite the HardSwish as ``y * Clip(y * s / 6 + 0.5, 0, 1)`` (the per-channel affine map as a depthwise
1x1 Conv), and multiply the
consumer Conv's input channel ``c`` by ``s_c`` (a depthwise consumer: its filter ``c``; a dense one:
column ``c``). The float function is unchanged up to float rounding; the pre-activation ``y`` and the
post-activation ``HS(x)/s`` now have equalised channel ranges. The gate ``clip(.)/6`` is bounded to
``[0, 1]`` in every channel, so its own quantization is harmless.

``s_c = (r_c / max r) ** alpha`` with ``r_c`` the channel's range (pre-activation clamped below at
-3, where HardSwish is 0 anyway, or post-activation, whichever is wider). A depthwise consumer absorbs
any ``s`` exactly in its per-channel weight scales (``alpha_depthwise = 1``); a dense consumer's
weight columns get scaled, which per-output-channel weight quantization does see, so its exponent
trades activation against weight error (``alpha_dense``, 0.5 measured best).

The floor (:class:`HardSwishFloor`, stage ``plan``): channel ``c`` of ``y`` below ``-3 / s_c`` gives
gate 0 and output 0 whatever its value, so the lower end of ``y``'s quantization range can be raised
to ``min_c max(min_c(y), -3 / s_c)`` without changing what the float graph would compute from it.

Both patterns are matched, the ONNX ``HardSwish`` op and PaddleOCR's decomposed
``Mul(y, Clip(Add(y, 3), 0, 6)) / 6``; both become the four-op scaled form above.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ocrquant.quantization.algorithms.base import Algorithm, AlgorithmContext, register_algorithm
from ocrquant.quantization.calibration.stats import iterate_outputs
from ocrquant.quantization.graph import consumers, get_attr, hardsigmoid_params, initializers
from ocrquant.quantization.prepare import affine_chain

EXTRA_KEY = "hs_cle"  # ctx.extras[EXTRA_KEY]: {pre-activation tensor: (per-channel s, per-channel min)}

#: name suffix of the gate Conv HS-CLE inserts after a producer Conv (``<producer><suffix>``): the
#: gate is part of its producer's layer for sensitivity analysis and mixed precision
GATE_SUFFIX = "_hscle_gate_affine"


@dataclass
class HardSwishEdge:
    """``producer (Conv) -> y -> HardSwish -> z -> consumer (Conv)``."""

    producer: onnx.NodeProto
    y: str
    nodes: list[onnx.NodeProto]  # the HardSwish: [HardSwish], [Add, Clip, Mul, Div|Mul] or [HardSigmoid, Mul]
    z: str
    consumer: onnx.NodeProto
    depthwise: bool
    # scalar Mul/Add/Sub between z and the consumer (a PP-OCRv4 affine block left unfolded in front of
    # a padded conv): z/s passes through a*x exactly; an added b becomes a per-channel b/s
    affine: list[onnx.NodeProto] = field(default_factory=list)


def _scalar(inits: dict, name: str) -> float | None:
    if name not in inits:
        return None
    v = numpy_helper.to_array(inits[name])
    return float(v.reshape(-1)[0]) if v.size == 1 else None


def _decomposed_output(
    y: str, users: list[onnx.NodeProto], cons: dict, inits: dict
) -> list[onnx.NodeProto] | None:
    """For ``y`` consumed by exactly ``Add(y, 3)`` and ``Mul(y, Clip(., 0, 6))`` followed by ``/ 6`` or
    ``* 1/6``, return those four nodes; else None."""
    adds = [n for n in users if n.op_type == "Add"]
    muls = [n for n in users if n.op_type == "Mul"]
    if len(users) != 2 or len(adds) != 1 or len(muls) != 1:
        return None
    add, mul = adds[0], muls[0]
    if len(add.input) != 2 or y not in add.input:
        return None
    slot = list(add.input).index(y)
    if _scalar(inits, add.input[1 - slot]) != 3.0:
        return None
    clip = cons.get(add.output[0], [])
    if len(clip) != 1 or clip[0].op_type != "Clip" or len(clip[0].input) < 3:
        return None
    clip = clip[0]
    if _scalar(inits, clip.input[1]) != 0.0 or _scalar(inits, clip.input[2]) != 6.0:
        return None
    if sorted(mul.input) != sorted([y, clip.output[0]]):
        return None
    last = cons.get(mul.output[0], [])
    if len(last) != 1:
        return None
    last = last[0]
    other = [i for i in last.input if i != mul.output[0]]
    if len(other) != 1:
        return None
    c = _scalar(inits, other[0])
    if c is None or not (
        (last.op_type == "Div" and last.input[0] == mul.output[0] and c == 6.0)
        or (last.op_type == "Mul" and abs(c - 1 / 6) < 1e-6)
    ):
        return None
    return [add, clip, mul, last]


def _hardsigmoid_output(y: str, users: list[onnx.NodeProto]) -> list[onnx.NodeProto] | None:
    """For ``y`` consumed by exactly ``HardSigmoid(y, alpha=1/6, beta=0.5)`` and ``Mul(y, that)`` (the
    ONNX HardSwish function body, as paddle2onnx writes PP-OCRv4), return those two nodes; else None."""
    sig = [n for n in users if n.op_type == "HardSigmoid"]
    muls = [n for n in users if n.op_type == "Mul"]
    if len(users) != 2 or len(sig) != 1 or len(muls) != 1:
        return None
    sig_node, mul = sig[0], muls[0]
    alpha, beta = hardsigmoid_params(sig_node)
    if abs(alpha - 1 / 6) > 1e-6 or abs(beta - 0.5) > 1e-6 or list(sig_node.input) != [y]:
        return None
    if sorted(mul.input) != sorted([y, sig_node.output[0]]):
        return None
    return [sig_node, mul]


def find_hardswish_edges(model: onnx.ModelProto) -> list[HardSwishEdge]:
    """Every Conv -> HardSwish -> Conv edge whose tensors have no other reader (so rescaling is local)."""
    cons, inits = consumers(model), initializers(model)
    outputs = {o.name for o in model.graph.output}
    edges = []
    for p in model.graph.node:
        # Any Conv producer works: dividing an output channel (its filter and bias) is exact for any group.
        if p.op_type != "Conv" or len(p.input) < 2 or p.input[1] not in inits:
            continue
        y = p.output[0]
        if y in outputs:
            continue
        users = cons.get(y, [])
        if len(users) == 1 and users[0].op_type == "HardSwish":
            hs_nodes = [users[0]]
        else:
            hs_nodes = _decomposed_output(y, users, cons, inits) or _hardsigmoid_output(y, users)
            if hs_nodes is None:
                continue
        z = hs_nodes[-1].output[0]
        affine, _, _ = affine_chain(model, z, cons, inits, outputs)
        if not all(any(_scalar(inits, i) is not None for i in n.input) for n in affine):
            continue  # a constant that is not an initializer: leave the edge alone
        t = affine[-1].output[0] if affine else z
        nxt = cons.get(t, [])
        if t in outputs or len(nxt) != 1 or nxt[0].op_type != "Conv" or nxt[0].input[0] != t:
            continue
        c = nxt[0]
        if len(c.input) < 2 or c.input[1] not in inits:
            continue
        channels = inits[p.input[1]].dims[0]
        group = get_attr(c, "group", 1)
        w = inits[c.input[1]].dims
        depthwise = group == channels and w[0] == channels and w[1] == 1
        if group != 1 and not depthwise:
            continue
        edges.append(HardSwishEdge(p, y, hs_nodes, z, c, depthwise, affine))
    return edges


def equalising_scales(ranges: np.ndarray, alpha: float, min_ratio: float) -> np.ndarray:
    """``s_c = (r_c / max r) ** alpha``, ranges floored at ``min_ratio * max r``: the per-channel
    divisor that brings every channel's range towards the widest (all ones when every range is 0)."""
    r = np.asarray(ranges, dtype=np.float64)
    top = float(r.max())
    if top <= 0:
        return np.ones_like(r)
    return (np.maximum(r, top * min_ratio) / top) ** alpha


def channel_min_max(
    model: onnx.ModelProto, tensors: list[str], batches, limit: int, progress: bool
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-channel (axis 1) min and max of ``tensors`` over the first ``limit`` calibration batches."""
    mins: dict[str, np.ndarray] = {}
    maxs: dict[str, np.ndarray] = {}
    for outs in iterate_outputs(
        model, tensors, itertools.islice(batches(), limit), desc="hs_cle statistics", progress=progress
    ):
        for t, v in outs.items():
            flat = np.moveaxis(v, 1, 0).reshape(v.shape[1], -1)
            lo, hi = flat.min(axis=1), flat.max(axis=1)
            mins[t] = np.minimum(mins[t], lo) if t in mins else lo
            maxs[t] = np.maximum(maxs[t], hi) if t in maxs else hi
    return mins, maxs


def _set(inits: dict, name: str, value: np.ndarray) -> None:
    inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))


def _rescale_affine(
    model: onnx.ModelProto, inits: dict, affine: list[onnx.NodeProto], s: np.ndarray, suffix: str
) -> None:
    """The scalar affine nodes between a rescaled ``z / s`` and its consumer: ``a * x`` passes the
    per-channel ``1 / s`` through unchanged, an added (subtracted) scalar ``b`` becomes ``b / s`` per
    channel, a new initializer named after the node with ``suffix``."""
    for node in affine:
        if node.op_type not in ("Add", "Sub"):
            continue
        k = next(i for i, t in enumerate(node.input) if _scalar(inits, t) is not None)
        name = f"{node.name or node.output[0]}{suffix}"
        b = (_scalar(inits, node.input[k]) / s).astype(np.float32).reshape(1, -1, 1, 1)
        model.graph.initializer.append(numpy_helper.from_array(b, name))
        inits[name] = model.graph.initializer[-1]
        node.input[k] = name


class _Equaliser(Algorithm):
    """The options HS-CLE and hs_scale share: ``s_c = (r_c / max r) ** alpha`` (alpha per consumer
    kind, ranges floored at ``min_ratio``), statistics over the first ``max_batches`` batches."""

    def __init__(
        self,
        alpha_dense: float = 0.5,
        alpha_depthwise: float = 1.0,
        min_ratio: float = 1e-3,
        max_batches: int = 32,
    ) -> None:
        self.alpha_dense = alpha_dense
        self.alpha_depthwise = alpha_depthwise
        self.min_ratio = min_ratio
        self.max_batches = max_batches

    def equalising(self, edge: HardSwishEdge, ranges: np.ndarray) -> np.ndarray:
        """``s`` for ``edge`` from its channel ranges, with the exponent of its consumer's kind."""
        alpha = self.alpha_depthwise if edge.depthwise else self.alpha_dense
        return equalising_scales(ranges, alpha, self.min_ratio)

    @staticmethod
    def scale_consumer(inits: dict, edge: HardSwishEdge, s: np.ndarray) -> None:
        """Multiply the consumer Conv's input channel ``c`` by ``s_c`` (a depthwise consumer: its
        filter ``c``; a dense one: weight column ``c``), taking back what its input was divided by."""
        w = numpy_helper.to_array(inits[edge.consumer.input[1]]).astype(np.float64)
        _set(inits, edge.consumer.input[1], w * s.reshape((-1, 1, 1, 1) if edge.depthwise else (1, -1, 1, 1)))

    @staticmethod
    def report(edges: list[HardSwishEdge], scales: list[np.ndarray]) -> dict[str, Any]:
        return {
            "edges": len(edges),
            "depthwise_consumers": sum(e.depthwise for e in edges),
            "min_scale": min(float(s.min()) for s in scales),
            "layers": [e.producer.name for e in edges],
        }


@register_algorithm("hs_cle", stage="float")
class HardSwishCLE(_Equaliser):
    def __init__(self, *args: Any, float_gate: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.float_gate = float_gate

    def scales(self, edge: HardSwishEdge, mins: dict, maxs: dict) -> np.ndarray:
        pre_lo = np.maximum(np.minimum(mins[edge.y], 0.0), -3.0)
        r_pre = np.maximum(maxs[edge.y], 0.0) - pre_lo
        r_post = np.maximum(maxs[edge.z], 0.0) - np.minimum(mins[edge.z], 0.0)
        return self.equalising(edge, np.maximum(r_pre, r_post))

    def _rescaled_hardswish(
        self, model: onnx.ModelProto, e: HardSwishEdge, s: np.ndarray, ctx: AlgorithmContext
    ) -> dict[int, list[onnx.NodeProto]]:
        """Replace the HardSwish of ``e`` by ``z = y * Clip(Conv_dw1x1(y; s / 6, bias 0.5), 0, 1)``.

        The gate's per-channel affine map is a depthwise 1x1 Conv, not ``Mul(y, s / 6) + 0.5``: as a
        Conv weight, ``s / 6`` gets per-channel scales and is represented exactly, where a Mul constant
        is quantized per tensor and the channels with small ``s`` round to nothing (measured on rec,
        first 500 crops: Mul form 0.626, the same gate in float 0.662). It is also one integer kernel
        instead of two; the Clip folds into its requantization, the final Mul is a QLinearMul.
        The result replaces the last HardSwish node (its inputs exist by then); the others go.
        """
        base = e.y + "_hscle"
        channels = len(s)
        consts = {
            f"{base}_w": (s / 6.0).astype(np.float32).reshape(channels, 1, 1, 1),
            f"{base}_b": np.full(channels, 0.5, np.float32),
            f"{base}_zero": np.array(0.0, np.float32),
            f"{base}_one": np.array(1.0, np.float32),
        }
        for name, value in consts.items():
            model.graph.initializer.append(numpy_helper.from_array(value, name))
        name = e.producer.name + "_hscle"
        nodes = [
            helper.make_node(
                "Conv",
                [e.y, f"{base}_w", f"{base}_b"],
                [f"{base}_pre"],
                name=e.producer.name + GATE_SUFFIX,
                group=channels,
                kernel_shape=[1, 1],
            ),
            helper.make_node(
                "Clip", [f"{base}_pre", f"{base}_zero", f"{base}_one"], [f"{base}_gate"], name=f"{name}_clip"
            ),
            helper.make_node("Mul", [e.y, f"{base}_gate"], [e.z], name=f"{name}_out"),
        ]
        if self.float_gate:
            for n in nodes[:2]:
                ctx.keep_float[n.name] = "HS-CLE gate (per-channel affine) computed in float"
        out = {id(n): [] for n in e.nodes}
        out[id(e.nodes[-1])] = nodes
        return out

    def apply(self, ctx: AlgorithmContext) -> dict[str, Any]:
        model = ctx.model
        edges = find_hardswish_edges(model)
        if not edges:
            return {"edges": 0}
        tensors = list(dict.fromkeys(t for e in edges for t in (e.y, e.z)))
        mins, maxs = channel_min_max(model, tensors, ctx.batches, self.max_batches, ctx.progress)
        inits = initializers(model)
        new_nodes: dict[int, list[onnx.NodeProto]] = {}  # node id -> nodes that replace it
        record: dict[str, tuple[list[float], list[float]]] = {}
        spread: list[np.ndarray] = []
        for e in edges:
            s = self.scales(e, mins, maxs)
            shape = (-1, 1, 1, 1)
            w = numpy_helper.to_array(inits[e.producer.input[1]]).astype(np.float64)
            _set(inits, e.producer.input[1], w / s.reshape(shape))
            if len(e.producer.input) > 2 and e.producer.input[2] in inits:
                b = numpy_helper.to_array(inits[e.producer.input[2]]).astype(np.float64)
                _set(inits, e.producer.input[2], b / s)
            self.scale_consumer(inits, e, s)
            new_nodes.update(self._rescaled_hardswish(model, e, s, ctx))
            _rescale_affine(model, inits, e.affine, s, "_hscle_b")
            # Per-channel facts the floor needs, in the rescaled domain: y_c = x_c / s_c.
            record[e.y] = ((s).tolist(), (mins[e.y] / s).tolist())
            spread.append(s)
        nodes = [n for node in model.graph.node for n in new_nodes.get(id(node), [node])]
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        ctx.extras[EXTRA_KEY] = record
        return self.report(edges, spread)


@register_algorithm("hs_floor", stage="plan")
class HardSwishFloor(Algorithm):
    """Narrow HardSwish ranges to the values that can still change the output (exact).

    * pre-activation ``y``: lower end raised to ``min_c max(min_c(y), -3 / s_c)`` (gate 0 below);
    * HS-CLE gate pre-activation ``y * s / 6 + 0.5``: clipped to [0, 1], since the Clip after it is
      constant outside (it inherits the unequalised ``x / 6`` ranges otherwise).
    """

    def apply(self, ctx: AlgorithmContext) -> dict[str, Any]:
        gates = 0
        for y in ctx.extras.get(EXTRA_KEY, {}):
            for name, (a, b) in ((f"{y}_hscle_pre", (0.0, 1.0)),):
                if name in ctx.plan.ranges:
                    lo, hi = ctx.plan.ranges[name]
                    ctx.plan.ranges[name] = (max(lo, a), min(hi, b))
                    gates += 1
        report = self._floor(ctx)
        report["gate_ranges_clipped"] = gates
        return report

    def _floor(self, ctx: AlgorithmContext) -> dict[str, Any]:
        per_channel = ctx.extras.get(EXTRA_KEY)
        if per_channel is None:  # no HS-CLE: s = 1, only per-tensor facts
            floors = {}
            for e in find_hardswish_edges(ctx.model):
                floors[e.y] = -3.0
            per_channel_lo = {y: None for y in floors}
        else:
            floors, per_channel_lo = {}, {}
            for y, (s, mins) in per_channel.items():
                s, mins = np.asarray(s), np.asarray(mins)
                per_channel_lo[y] = float(np.min(np.maximum(mins, -3.0 / s)))
        changed = {}
        for y, lo_c in per_channel_lo.items():
            if y not in ctx.plan.ranges:
                continue
            lo, hi = ctx.plan.ranges[y]
            new_lo = max(lo, floors[y]) if lo_c is None else max(lo, min(lo_c, 0.0))
            if new_lo > lo:
                ctx.plan.ranges[y] = (new_lo, hi)
                changed[y] = [lo, new_lo]
        return {"raised": len(changed), "mean_range_gain": _gain(changed, ctx.plan.ranges)}


def _gain(changed: dict[str, list[float]], ranges: dict[str, tuple[float, float]]) -> float:
    if not changed:
        return 1.0
    g = [(ranges[y][1] - old) / max(ranges[y][1] - new, 1e-12) for y, (old, new) in changed.items()]
    return float(np.mean(g))


@register_algorithm("hs_scale", stage="float")
class HardSwishOutputScale(_Equaliser):
    """HS-CLE for a runtime that quantizes only the inputs of its weighted ops (``--target openvino``).

    There the pre-activation ``y`` never gets a Q/DQ: OpenVINO runs ``Conv -> HardSwish`` as one
    integer convolution with the HardSwish (and any per-channel multiply after it) as float post-ops,
    and quantizes only what the next Conv reads. So only ``z = HS(y)`` needs equalised channels:
    ``z / s`` as a per-channel ``Mul`` right after the HardSwish, ``s`` into the consumer's input
    channels -- exact in float, and a post-op of the producer's kernel, where the four-op scaled
    HardSwish of :class:`HardSwishCLE` adds a depthwise gate Conv and a Mul per edge that OpenVINO runs
    as separate kernels (PP-OCRv3 rec in OpenVINO, docs/quantization.md: 1.43x FP32 with hs_scale,
    1.32x with hs_cle, 1.82x with neither, which reads nothing). ``s`` is :func:`equalising_scales`
    of ``z``'s channel ranges (exponent 1 for a depthwise consumer, 0.5 for a dense one, as in HS-CLE).
    """

    def apply(self, ctx: AlgorithmContext) -> dict[str, Any]:
        model = ctx.model
        edges = find_hardswish_edges(model)
        if not edges:
            return {"edges": 0}
        mins, maxs = channel_min_max(model, [e.z for e in edges], ctx.batches, self.max_batches, ctx.progress)
        inits = initializers(model)
        inserted: dict[str, onnx.NodeProto] = {}  # z -> the Mul that reads it
        spread: list[np.ndarray] = []
        for e in edges:
            s = self.equalising(e, np.maximum(maxs[e.z], 0.0) - np.minimum(mins[e.z], 0.0))
            self.scale_consumer(inits, e, s)
            scaled = f"{e.z}_hsscale"
            inv = f"{scaled}_inv"
            model.graph.initializer.append(
                numpy_helper.from_array((1.0 / s).astype(np.float32).reshape(1, -1, 1, 1), inv)
            )
            reader = e.affine[0] if e.affine else e.consumer
            reader.input[list(reader.input).index(e.z)] = scaled
            _rescale_affine(model, inits, e.affine, s, "_hsscale_b")
            inserted[e.z] = helper.make_node("Mul", [e.z, inv], [scaled], name=f"{e.producer.name}_hsscale")
            spread.append(s)
        nodes = []
        for node in model.graph.node:
            nodes.append(node)
            nodes.extend(inserted[o] for o in node.output if o in inserted)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        return self.report(edges, spread)
