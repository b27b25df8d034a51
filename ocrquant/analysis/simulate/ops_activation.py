"""Activations: exact integer clamps (Relu, Clip) and lookup tables on the integer input.

A unary function of an 8-bit (or 16-bit) input has only 256 (65536) possible inputs, so the
hardware stores ``table[q] = Q_out(f(DQ_in(q)))`` and looks it up: HardSigmoid, HardSwish, Sigmoid,
Tanh, and elementwise ops with a scalar constant (``x / 6`` in decomposed HardSwish). The table is
built offline with the op's own float definition (the single-node executor), so the lookup equals
the float QDQ reference bit for bit. Softmax uses an exp table on ``max - q`` and an integer division.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ocrquant.analysis.simulate.qtypes import Fallback, QParams, QTensor, quantize_linear
from ocrquant.analysis.simulate.registry import KernelContext, per_tensor, register_kernel

LUT_OPS = (
    "HardSigmoid",
    "HardSwish",
    "Sigmoid",
    "Tanh",
    "LeakyRelu",
    "Elu",
    "Selu",
    "Gelu",
    "Erf",
    "Exp",
    "Log",
    "Sqrt",
    "Reciprocal",
    "Neg",
    "Abs",
    "Softplus",
    "Mish",
    "Div",
    "Pow",
)
EXP_BITS = 16


def lookup_table(ctx: KernelContext, ins: list[Any], out: QParams) -> np.ndarray:
    """Elementwise op of one quantized input (others scalar constants) as a table lookup."""
    x = per_tensor(ins[0], f"{ctx.node.op_type} input")
    key = f"lut:{ctx.node.name}:{id(ctx.node)}"
    table = ctx.cache.get(key)
    if table is None:
        others = []
        for v in ins[1:]:
            value = v.dequantize() if isinstance(v, QTensor) else v
            if value is not None and np.size(value) != 1:
                raise Fallback("second operand is not a scalar constant (no lookup table)")
            others.append(value)
        codes = np.arange(x.params.qmin, x.params.qmax + 1).astype(x.params.dtype)
        real = QTensor(codes, x.params).dequantize()
        table = quantize_linear(ctx.run_node(ctx.node, [real, *others])[0], out)
        ctx.cache[key] = table
    ctx.note(f"lookup table ({table.size} entries)")
    return table[x.q.astype(np.int64) - x.params.qmin]


for _op in LUT_OPS:
    register_kernel(_op, family="activation")(lookup_table)


def _clamp_bounds(x: QTensor, lo: float | None, hi: float | None) -> tuple[int, int]:
    s, zp = float(x.params.scale.reshape(-1)[0]), int(x.params.zero_point.reshape(-1)[0])
    qlo = (
        x.params.qmin
        if lo is None
        else int(np.clip(np.rint(np.float32(lo) / np.float32(s)) + zp, x.params.qmin, x.params.qmax))
    )
    qhi = (
        x.params.qmax
        if hi is None
        else int(np.clip(np.rint(np.float32(hi) / np.float32(s)) + zp, x.params.qmin, x.params.qmax))
    )
    return qlo, qhi


def _scalar(v: Any) -> float | None:
    if v is None or (isinstance(v, np.ndarray) and v.size == 0):
        return None
    return float(np.ravel(v.dequantize() if isinstance(v, QTensor) else v)[0])


@register_kernel("Relu", "Clip", family="activation")
def clamp(ctx: KernelContext, ins: list[Any], out: QParams) -> np.ndarray:
    """Same scale in and out: a clamp of the integers, exact. Otherwise: a lookup table."""
    x = per_tensor(ins[0], f"{ctx.node.op_type} input")
    if not x.params.same_as(out):
        return lookup_table(ctx, ins, out)
    if ctx.node.op_type == "Relu":
        lo, hi = 0.0, None
    else:
        lo = _scalar(ins[1]) if len(ins) > 1 else ctx.attr("min")
        hi = _scalar(ins[2]) if len(ins) > 2 else ctx.attr("max")
    qlo, qhi = _clamp_bounds(x, lo, hi)
    ctx.note("integer clamp")
    return np.clip(x.q, qlo, qhi).astype(out.dtype)


@register_kernel("Softmax", family="activation")
def softmax(ctx: KernelContext, ins: list[Any], out: QParams) -> np.ndarray:
    """exp via a table of ``round(2^16 exp(-S d))`` for d = max - q, int sum, rounded integer division."""
    x = per_tensor(ins[0], "Softmax input")
    axis = int(ctx.attr("axis", -1))
    if axis % x.q.ndim != x.q.ndim - 1:
        raise Fallback("Softmax over a non-last axis (opset < 13 semantics)")
    levels = x.params.qmax - x.params.qmin + 1
    table = np.rint(np.exp(-float(x.params.scale.reshape(-1)[0]) * np.arange(levels)) * (1 << EXP_BITS))
    table = table.astype(np.int64)
    q = x.q.astype(np.int64)
    e = table[q.max(axis=-1, keepdims=True) - q]
    total = e.sum(axis=-1, keepdims=True)
    inv_scale = np.int64(np.rint((1 << EXP_BITS) / float(out.scale.reshape(-1)[0])))
    num = e * inv_scale
    den = total << EXP_BITS
    y = (num + den // 2) // den + int(out.zero_point.reshape(-1)[0])
    ctx.note("exp lookup table + integer division")
    return np.clip(y, out.qmin, out.qmax).astype(out.dtype)
