"""MatMul and Gemm in integers (exact float64 GEMM of integers, int32 accumulator, requantize).

Weight scales may be per output column (the last axis of MatMul's B; axis 0 or 1 of Gemm's B
depending on transB); scales along the reduction axis cannot be factored out of the sum, so such a
node runs in float.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ocrquant.analysis.simulate.qtypes import Fallback, QParams, QTensor
from ocrquant.analysis.simulate.registry import (
    KernelContext,
    per_tensor,
    register_kernel,
    to_accumulator_scale,
)


def _column_scale(b: QTensor, column_axis: int) -> np.ndarray:
    if b.params.per_tensor:
        return b.params.scale.astype(np.float64).reshape(())
    if (b.params.axis or 0) % b.q.ndim != column_axis % b.q.ndim:
        raise Fallback("weight scales are per-channel along the reduction axis")
    return b.params.scale.astype(np.float64)


@register_kernel("MatMul", family="matmul", quantized_inputs=(0, 1))
def matmul(ctx: KernelContext, ins: list[Any], out: QParams) -> np.ndarray:
    a = per_tensor(ins[0], "MatMul input A")
    b = ins[1]
    col_scale = _column_scale(b, b.q.ndim - 1)
    if b.q.ndim < 2 or a.q.ndim < 2:
        raise Fallback("MatMul with a 1-D operand")
    acc = ctx.accumulate(np.matmul(a.centered().astype(np.float64), b.centered().astype(np.float64)))
    multiplier = ctx.product_multiplier(a.params.scale, col_scale, out.scale)
    return ctx.requantize(acc, multiplier, out)


@register_kernel("Gemm", family="matmul", quantized_inputs=(0, 1))
def gemm(ctx: KernelContext, ins: list[Any], out: QParams) -> np.ndarray:
    a = per_tensor(ins[0], "Gemm input A")
    b = ins[1]
    c = ins[2] if len(ins) > 2 else None
    trans_a, trans_b = int(ctx.attr("transA", 0)), int(ctx.attr("transB", 0))
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    col_scale = _column_scale(b, 0 if trans_b else 1)
    ac, bc = a.centered().astype(np.float64), b.centered().astype(np.float64)
    acc = ctx.accumulate((ac.T if trans_a else ac) @ (bc.T if trans_b else bc))
    acc_scale = np.broadcast_to(a.params.scale.astype(np.float64) * col_scale, (acc.shape[1],))
    if c is not None:
        n_cols = acc.shape[1]
        if np.size(c.q if isinstance(c, QTensor) else c) not in (1, n_cols):
            raise Fallback("Gemm bias C is not a per-column vector")
        if not (isinstance(c, QTensor) and beta == 1.0):
            real = (c.dequantize() if isinstance(c, QTensor) else np.asarray(c)).astype(np.float64) * beta
            c = np.broadcast_to(real.reshape(-1), (n_cols,))
        acc = ctx.accumulate(acc + to_accumulator_scale(c, acc_scale * alpha, 2))
    multiplier = alpha * ctx.product_multiplier(a.params.scale, col_scale, out.scale)
    multiplier = np.broadcast_to(multiplier, (acc.shape[1],))
    return ctx.requantize(acc, multiplier.reshape(1, -1), out)
