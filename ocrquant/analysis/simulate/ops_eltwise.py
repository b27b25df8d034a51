"""Add, Sub, Mul, Concat of quantized tensors with different scales, in integers.

Add/Sub rescale both inputs to the output scale with two 31-bit multipliers on a shared exponent
and round once (see ``add_sub``). Mul multiplies the centered integers and requantizes with
``S_a * S_b / S_out``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ocrquant.analysis.simulate.fixedpoint import quantize_multiplier, rounding_shift_right
from ocrquant.analysis.simulate.qtypes import Fallback, QParams, QTensor, quantize_linear
from ocrquant.analysis.simulate.registry import KernelContext, per_tensor, register_kernel


def _operands(ins: list[Any], op: str) -> tuple[QTensor, QTensor]:
    if len(ins) != 2 or not all(isinstance(t, QTensor) for t in ins):
        raise Fallback(f"{op} operands are not both quantized")
    return per_tensor(ins[0], f"{op} input A"), per_tensor(ins[1], f"{op} input B")


@register_kernel("Add", "Sub", family="eltwise", quantized_inputs="all")
def add_sub(ctx: KernelContext, ins: list[Any], out: QParams) -> np.ndarray:
    """``y = round(ca * Ma + cb * Mb) + zo`` with both multipliers on one exponent and a single rounding.

    ``Ma = S_a / S_out`` and ``Mb = S_b / S_out`` become 31-bit integers sharing the larger one's
    exponent (the smaller one loses low bits only if the ratio of scales is not a power of two); the
    64-bit sum is shifted once. Unlike TFLite's two-stage rescale this keeps exact ties exact (x + 3
    with x = 0 in decomposed HardSwish lands on k + 0.5), so the rounding mode alone decides them.
    """
    a, b = _operands(ins, ctx.node.op_type)
    if ctx.requant == "float32":
        return _add_sub_float32(ctx.node.op_type, a, b, out)
    so = out.scale.astype(np.float64).reshape(())
    ma0, ea = quantize_multiplier(a.params.scale.astype(np.float64).reshape(()) / so)
    mb0, eb = quantize_multiplier(b.params.scale.astype(np.float64).reshape(()) / so)
    e = np.maximum(ea, eb)
    ma = rounding_shift_right(ma0, e - ea, ctx.rounding)
    mb = rounding_shift_right(mb0, e - eb, ctx.rounding)
    cb = b.centered() if ctx.node.op_type == "Add" else -b.centered()
    acc = a.centered() * ma + cb * mb
    ctx.note("requant: two int32 multipliers, one shift")
    y = rounding_shift_right(acc, 31 - e, ctx.rounding) + out.zp64(acc.ndim)
    return np.clip(y, out.qmin, out.qmax).astype(out.dtype)


def _fma32(x: np.ndarray, y: np.float32, z: np.ndarray | np.float32) -> np.ndarray:
    """float32 fused multiply-add (one rounding): exact in float64 for int8 x float32 operands."""
    return (x.astype(np.float64) * np.float64(y) + np.asarray(z, np.float64)).astype(np.float32)


def _add_sub_float32(op: str, a: QTensor, b: QTensor, out: QParams) -> np.ndarray:
    """onnxruntime's arithmetic for ``--requant float32``.

    Add is MLAS's QLinearAdd kernel: float32 ratios ``S_a/S_out``, ``S_b/S_out``, a float32 constant
    ``zo - (ra*za + rb*zb)``, then ``fma(a, ra, fma(b, rb, constant))`` rounded half to even. The
    order matters in the last bit: checked exhaustively (every uint8 pair, 12 random scale sets,
    tails and a broadcast scalar) against onnxruntime 1.31's fused kernel, 0 of 2.4 M values differ;
    other orders differ in 2-6. Sub has no fused kernel: DequantizeLinear -> Sub -> QuantizeLinear in
    float32, as onnxruntime runs it.
    """
    f32 = np.float32
    if op == "Sub":
        return quantize_linear(a.dequantize() - b.dequantize(), out)
    sc = f32(out.scale.reshape(-1)[0])
    za, zb, zc = (f32(t.zero_point.reshape(-1)[0]) for t in (a.params, b.params, out))
    ra, rb = f32(f32(a.params.scale.reshape(-1)[0]) / sc), f32(f32(b.params.scale.reshape(-1)[0]) / sc)
    constant = f32(zc - f32(f32(ra * za) + f32(rb * zb)))
    y = _fma32(a.q, ra, _fma32(b.q, rb, constant))
    return np.clip(np.rint(y), out.qmin, out.qmax).astype(out.dtype)


@register_kernel("Mul", family="eltwise", quantized_inputs="all")
def mul(ctx: KernelContext, ins: list[Any], out: QParams) -> np.ndarray:
    a, b = _operands(ins, "Mul")
    acc = ctx.accumulate(a.centered() * b.centered())
    multiplier = (
        a.params.scale.astype(np.float64) * b.params.scale.astype(np.float64) / out.scale.astype(np.float64)
    )
    return ctx.requantize(acc, multiplier.reshape(()), out)


def rescale_to(ctx: KernelContext, t: QTensor, out: QParams) -> np.ndarray:
    """Move a tensor onto another scale / zero point (identity when they are the same)."""
    if t.params.same_as(out):
        return t.q.astype(out.dtype)
    per_tensor(t, "rescaled input")
    multiplier = t.params.scale.astype(np.float64).reshape(()) / out.scale.astype(np.float64).reshape(())
    return ctx.requantize(t.centered(), multiplier, out)


@register_kernel("Concat", family="movement", quantized_inputs="all")
def concat(ctx: KernelContext, ins: list[Any], out: QParams) -> np.ndarray:
    if not all(isinstance(t, QTensor) for t in ins if t is not None):
        raise Fallback("Concat inputs are not all quantized")
    parts = [rescale_to(ctx, t, out) for t in ins if t is not None]
    return np.concatenate(parts, axis=int(ctx.attr("axis", 0)))
