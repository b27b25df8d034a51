"""Rounding chosen per weight for the layer's output (AdaRound's objective), not to the nearest grid point.

Why: rounding each weight to its nearest integer minimises the *weight* error, but what the network
sees is the layer's output, where the rounding errors of one output channel add up over its whole
receptive field, and are correlated through the inputs. AdaRound (Nagel et al., 2020) showed that
choosing, for every weight, between the grid point below and the one above so that the layer's
output error is smallest recovers much of what round-to-nearest loses. Here the target is the float
layer on the float model's input and the candidate is the quantized layer on the input the
quantized model really feeds it (so upstream activation error is compensated too, as in sequential
bias correction), measured layer by layer in topological order:

    minimise over q in {floor(w/s), floor(w/s) + 1}:  sum_n || w x_n - s q x~_n ||^2

With ``H = sum x~ x~^T`` and ``G = w sum x x~^T`` the objective is the quadratic
``sum_o (q_o H q_o^T - 2 G_o q_o^T)``, separable per output channel. Instead of AdaRound's
continuous relaxation (a sigmoid per weight, thousands of gradient steps through the layer), it is
minimised directly over the binary choices by coordinate descent on this quadratic form, down to a
point where no single flip helps: a flip of one weight changes the loss by ``d^2 H_kk + 2 d R_ok``
with the residual ``R = q H - G`` kept up to date, all output channels at once. Every accepted flip
lowers the calibration objective, so the result is never worse than nearest rounding there.

Constraints kept, so the written model stays what the target's kernels compute exactly: no weight
beyond its channel's largest nearest-rounded magnitude (7-bit grids stay 7-bit), and no pair of
reduction indices whose same-sign sum grows past ``saturation.PAIR_LIMIT`` (or past its own nearest
sum where that is larger): onnxruntime's AVX2 u8 x s8 kernels add such pairs in int16.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ocrquant.fileio import atomic_path
from ocrquant.quantization.algorithms.base import Algorithm, AlgorithmContext, register_algorithm
from ocrquant.quantization.calibration.stats import iterate_outputs
from ocrquant.quantization.graph import get_attr, initializers, producers
from ocrquant.quantization.saturation import PAIR_LIMIT, from_reduction_major, reduction_major


@dataclass
class _Layer:
    """One quantized weighted layer: where its tensors live in the float and in the QDQ model."""

    name: str
    op_type: str  # Conv | MatMul
    float_input: str  # the layer's input tensor in the float model
    quant_input: str  # the tensor the quantized layer reads (its input DequantizeLinear's output)
    weight: np.ndarray  # float weight, original layout
    q_proto: onnx.TensorProto  # the int8 weight initializer of the QDQ model
    scale: np.ndarray  # per output channel
    node: onnx.NodeProto  # the QDQ model's node (Conv attributes)
    groups: int


@dataclass(frozen=True)
class ConvFields:
    """A 2-D Conv input laid out for gathering receptive fields: channels last, padded."""

    padded: np.ndarray  # (batch, H + pads, W + pads, cin)
    out_hw: tuple[int, int]
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    groups: int

    @classmethod
    def of(cls, x: np.ndarray, node: onnx.NodeProto, kernel: tuple[int, int], groups: int) -> ConvFields:
        if get_attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise ValueError("auto_pad")
        kh, kw = kernel
        sh, sw = get_attr(node, "strides", [1, 1])
        dh, dw = get_attr(node, "dilations", [1, 1])
        top, left, bottom, right = get_attr(node, "pads", [0, 0, 0, 0])
        _, _, h, w = x.shape
        oh = (h + top + bottom - (kh - 1) * dh - 1) // sh + 1
        ow = (w + left + right - (kw - 1) * dw - 1) // sw + 1
        padded = np.pad(x.transpose(0, 2, 3, 1), ((0, 0), (top, bottom), (left, right), (0, 0)))
        return cls(padded, (oh, ow), (kh, kw), (sh, sw), (dh, dw), groups)

    @property
    def count(self) -> int:
        return self.padded.shape[0] * self.out_hw[0] * self.out_hw[1]

    def gather(self, pick: np.ndarray) -> np.ndarray:
        """Fields ``pick`` (numbered over batch, out_h, out_w): (fields, groups, kh * kw * cin/groups),
        gathered one kernel tap at a time as rows of ``cin`` contiguous values."""
        (kh, kw), (sh, sw), (dh, dw), g = self.kernel, self.strides, self.dilations, self.groups
        cin = self.padded.shape[3]
        bi, hi, wi = np.unravel_index(pick, (self.padded.shape[0], *self.out_hw))
        fields = np.empty((len(pick), kh, kw, cin), dtype=self.padded.dtype)
        for i in range(kh):
            for j in range(kw):
                fields[:, i, j] = self.padded[bi, hi * sh + i * dh, wi * sw + j * dw]
        fields = fields.reshape(len(pick), kh, kw, g, cin // g).transpose(0, 3, 1, 2, 4)
        return fields.reshape(len(pick), g, kh * kw * (cin // g))


def conv_patches(
    x: np.ndarray, node: onnx.NodeProto, kernel: tuple[int, int], groups: int, pick: np.ndarray | None = None
) -> np.ndarray:
    """Receptive fields of a 2-D Conv input: (fields, groups, kh * kw * cin/groups), each field in the
    (kh, kw, cin) reduction order of ``saturation.reduction_major``; fields numbered over (batch,
    out_h, out_w). ``pick``: only these fields."""
    layout = ConvFields.of(x, node, kernel, groups)
    return layout.gather(np.arange(layout.count) if pick is None else pick)


class _Fields:
    """A layer input's receptive fields, gathered a chunk at a time (see ``_statistics``)."""

    def __init__(self, layer: _Layer, x: np.ndarray) -> None:
        self.conv: ConvFields | None = None
        if layer.op_type == "Conv":
            self.conv = ConvFields.of(x, layer.node, tuple(layer.weight.shape[2:]), layer.groups)
            self.count = self.conv.count
        else:  # MatMul: every token is one field
            self.rows = x.reshape(-1, 1, x.shape[-1])
            self.count = self.rows.shape[0]

    def gather(self, pick: np.ndarray) -> np.ndarray:
        return self.conv.gather(pick) if self.conv is not None else self.rows[pick]


def _row_products(v: np.ndarray, mats: np.ndarray, group: np.ndarray) -> np.ndarray:
    """``v_o @ mats[group[o]]`` for every row o (one BLAS product when there is one group)."""
    if mats.shape[0] == 1:
        return v @ mats[0]
    return np.einsum("ok,okK->oK", v, mats[group])


def choose_rounding(
    w_rows: np.ndarray,
    scale: np.ndarray,
    q_rows: np.ndarray,
    hess: np.ndarray,
    cross: np.ndarray,
    *,
    pair_layout: bool,
    energy: np.ndarray | None = None,
    max_sweeps: int = 8,
) -> tuple[np.ndarray, dict[str, float]]:
    """The integer weights (rows, K) minimising ``sum_o q_o H q_o^T - 2 G_o q_o^T`` over floor/ceil.

    ``hess`` and ``cross`` are (groups, Kg, Kg): ``sum x~ x~^T`` and ``sum x x~^T`` of each group's
    fields; row o belongs to group ``o // (rows / groups)``. ``q_rows`` is the nearest rounding, the
    start point; elements it did not round to floor/ceil (clipped ones) are left alone. ``energy``
    (per row, ``sum (w x)^2``) turns the objective into the output error, reported as SQNR.
    """
    rows, k = w_rows.shape
    groups = hess.shape[0]
    group = np.arange(rows) // (rows // groups)
    s = scale.astype(np.float64)[:, None]
    r = w_rows / s
    lo = np.floor(r)
    up = (q_rows - lo).astype(np.int64)
    free = (up == 0) | (up == 1)
    up = np.clip(up, 0, 1)
    cap = np.abs(q_rows).max(axis=1)
    g = _row_products(w_rows, cross, group)

    def loss(q: np.ndarray) -> np.ndarray:
        wq = q * s
        return ((_row_products(wq, hess, group) - 2 * g) * wq).sum(axis=1)

    q = lo + up
    before = loss(q)
    resid = _row_products(q * s, hess, group) - g
    diag = np.stack([np.diag(h) for h in hess])[group]  # (rows, Kg)
    partner = np.arange(k) ^ 1
    for _ in range(max_sweeps):
        changed = 0
        for j in range(k):
            new = lo[:, j] + 1 - up[:, j]
            d = (new - q[:, j]) * s[:, 0]
            gain = d * d * diag[:, j] + 2 * d * resid[:, j]
            ok = free[:, j] & (gain < -1e-12 * np.abs(before).clip(1e-30)) & (np.abs(new) <= cap)
            if pair_layout and partner[j] < k:
                mate = q[:, partner[j]]
                pos = np.maximum(new, 0) + np.maximum(mate, 0)
                neg = np.minimum(new, 0) + np.minimum(mate, 0)
                old_pos = np.maximum(q[:, j], 0) + np.maximum(mate, 0)
                old_neg = np.minimum(q[:, j], 0) + np.minimum(mate, 0)
                ok &= (pos <= np.maximum(PAIR_LIMIT, old_pos)) & (neg >= np.minimum(-PAIR_LIMIT, old_neg))
            if not ok.any():
                continue
            idx = np.nonzero(ok)[0]
            hrow = hess[group[idx], j, :] if groups > 1 else hess[0, j][None, :]
            resid[idx] += d[idx, None] * hrow
            q[idx, j] = new[idx]
            up[idx, j] = 1 - up[idx, j]
            changed += idx.size
        if not changed:
            break
    after = loss(q)
    offset = 0.0 if energy is None else float(energy.sum())
    report = {
        "changed": int((q != q_rows).sum()),
        "weights": int(q.size),
        "error_before": float(before.sum()) + offset,
        "error_after": float(after.sum()) + offset,
    }
    if energy is not None:
        for key in ("before", "after"):
            ratio = offset / max(report[f"error_{key}"], 1e-30)
            report[f"sqnr_{key}_db"] = round(float(10 * np.log10(ratio)), 3)  # a plain float in the printout
    return q.astype(np.int64), report


def _layers(ctx: AlgorithmContext, qmodel: onnx.ModelProto) -> list[_Layer]:
    inits = initializers(qmodel)
    prod = producers(qmodel)
    finits = initializers(ctx.model)
    # By node name: the quantizer keeps names but renames a Conv's output when it fuses the ReLU after
    # it (the weight and the input are what matter here, and they are the same).
    fnodes = {n.name: n for n in ctx.model.graph.node if n.op_type in ("Conv", "MatMul") and n.name}
    out = []
    for node in qmodel.graph.node:
        fnode = fnodes.get(node.name)
        if fnode is None or fnode.op_type != node.op_type:
            continue
        wdq, xdq = prod.get(node.input[1]), prod.get(node.input[0])
        if (
            wdq is None
            or wdq.op_type != "DequantizeLinear"
            or wdq.input[0] not in inits
            or xdq is None
            or xdq.op_type != "DequantizeLinear"
            or fnode.input[1] not in finits
        ):
            continue
        w = numpy_helper.to_array(finits[fnode.input[1]]).astype(np.float64)
        q = inits[wdq.input[0]]
        if q.data_type != onnx.TensorProto.INT8 or tuple(q.dims) != w.shape:
            continue
        if w.ndim != {"Conv": 4, "MatMul": 2}[node.op_type]:  # 2-D convs and plain matrix weights only
            continue
        scale = numpy_helper.to_array(inits[wdq.input[1]]).astype(np.float64).reshape(-1)
        rows = w.shape[0] if node.op_type == "Conv" else w.shape[1]
        if scale.size == 1:
            scale = np.full(rows, scale[0])
        if scale.size != rows:
            continue
        groups = int(get_attr(node, "group", 1)) if node.op_type == "Conv" else 1
        out.append(_Layer(node.name, node.op_type, fnode.input[0], node.input[0], w, q, scale, node, groups))
    return out


#: values per chunk of receptive fields in ``_statistics`` (4 MB of float32)
_CHUNK_VALUES = 1 << 20


@register_algorithm("adaround", stage="qdq")
class AdaRound(Algorithm):
    """Per-layer output-aware rounding of every quantized Conv / MatMul weight (see module docstring)."""

    def __init__(
        self, max_batches: int = 16, fields_per_batch: int = 4096, max_reduction: int = 4096, seed: int = 0
    ) -> None:
        self.max_batches = max_batches
        self.fields_per_batch = fields_per_batch
        # A layer's statistics are two (K, K) float64 matrices per group: a K of 9216 (rec's widest
        # conv) would take 1.4 GB and most of the run's time for 64 output channels; such layers keep
        # nearest rounding and are listed in the report.
        self.max_reduction = max_reduction
        self.seed = seed

    def _statistics(
        self,
        ctx: AlgorithmContext,
        qmodel: onnx.ModelProto,
        layer: _Layer,
        w_rows: np.ndarray,
        index: int,
        total: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``sum x~ x~^T`` and ``sum x x~^T`` per group over sampled receptive fields of the calibration
        set, and each output channel's float energy ``sum (w x)^2`` on the same fields."""
        rng = np.random.default_rng(self.seed)
        hess = cross = None
        # (groups, rows per group, Kg)
        by_group32 = w_rows.reshape(layer.groups, -1, w_rows.shape[1]).astype(np.float32)
        energy = np.zeros(w_rows.shape[0])
        float_out = iterate_outputs(
            ctx.model, [layer.float_input], itertools.islice(ctx.batches(), self.max_batches), progress=False
        )
        quant_out = iterate_outputs(
            qmodel,
            [layer.quant_input],
            itertools.islice(ctx.batches(), self.max_batches),
            desc=f"adaround ({index}/{total})",
            progress=ctx.progress,
            deployed=True,
        )
        for fo, qo in zip(float_out, quant_out, strict=True):
            fx, fq = _Fields(layer, fo[layer.float_input]), _Fields(layer, qo[layer.quant_input])
            pick = np.arange(fx.count)
            if fx.count > self.fields_per_batch:
                pick = rng.choice(fx.count, self.fields_per_batch, replace=False)
            # A chunk of fields at a time (~4 MB): the whole sample of a wide depthwise layer (4096
            # fields x 256 groups x 25 taps) is 105 MB per copy, and allocating, converting and
            # multiplying arrays that size dominated the layer's time. Products in float32 (a sum of at
            # most a few thousand terms, ~1e-6 relative), accumulated in float64 across chunks: half
            # the time of float64 products.
            step = max(16, _CHUNK_VALUES // (w_rows.shape[1] * layer.groups))
            for lo in range(0, len(pick), step):
                part = pick[lo : lo + step]
                px = fx.gather(part).transpose(1, 2, 0)  # (groups, Kg, fields)
                pq = fq.gather(part).transpose(1, 0, 2)  # (groups, fields, Kg)
                h = np.matmul(pq.transpose(0, 2, 1), pq).astype(np.float64)
                c = np.matmul(px, pq).astype(np.float64)
                hess = h if hess is None else hess + h
                cross = c if cross is None else cross + c
                energy += (np.matmul(by_group32, px).astype(np.float64) ** 2).sum(axis=2).reshape(-1)
        return hess, cross, energy

    def apply(self, ctx: AlgorithmContext) -> dict[str, Any]:
        assert ctx.qdq_path is not None
        qmodel = onnx.load(str(ctx.qdq_path))
        layers = _layers(ctx, qmodel)
        per_layer: dict[str, dict[str, float]] = {}
        skipped: dict[str, str] = {}
        for i, layer in enumerate(layers, 1):
            w_rows = reduction_major(layer.weight, layer.op_type)
            width = w_rows.shape[1]
            if width > self.max_reduction:
                skipped[layer.name] = f"reduction length {width} > max_reduction {self.max_reduction}"
                continue
            try:
                hess, cross, energy = self._statistics(ctx, qmodel, layer, w_rows, i, len(layers))
            except ValueError as exc:  # a Conv layout the field extraction does not cover
                skipped[layer.name] = str(exc)
                continue
            q_old = numpy_helper.to_array(layer.q_proto)
            q_rows = reduction_major(q_old.astype(np.float64), layer.op_type)
            depthwise = layer.op_type == "Conv" and layer.groups == layer.weight.shape[0] and layer.groups > 1
            q_new, report = choose_rounding(
                w_rows, layer.scale, q_rows, hess, cross, pair_layout=not depthwise, energy=energy
            )
            new = from_reduction_major(q_new, q_old.shape, layer.op_type).astype(np.int8)
            layer.q_proto.CopyFrom(numpy_helper.from_array(new, layer.q_proto.name))
            per_layer[layer.name] = report
        with atomic_path(ctx.qdq_path) as tmp:
            onnx.save(qmodel, str(tmp))
        return {
            "layers": len(per_layer),
            "changed_weights": sum(int(r["changed"]) for r in per_layer.values()),
            "skipped": skipped,
            "per_layer": per_layer,
        }
