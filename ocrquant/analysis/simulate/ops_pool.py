"""Average pooling in integers: an int32 sum of centered values, requantized by S_in / (S_out * count).

Windows that overlap padding divide by the number of real elements when ``count_include_pad`` is 0,
so the multiplier then varies per output position (a small table of multipliers in hardware).
When ``S_in / S_out`` is a power of two (npu-pow2) the sum is shifted and divided by the count
exactly (an integer divider), so ties are decided by the rounding mode, not by the 31-bit
approximation of ``1 / count``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ocrquant.analysis.simulate.fixedpoint import is_power_of_two, rounding_divide
from ocrquant.analysis.simulate.ops_conv import conv_pads
from ocrquant.analysis.simulate.qtypes import Fallback, QParams, QTensor, quantize_linear
from ocrquant.analysis.simulate.registry import KernelContext, per_tensor, register_kernel


def _average(ctx: KernelContext, acc: np.ndarray, count: np.ndarray, x: QTensor, out: QParams) -> np.ndarray:
    ratio = float(x.params.scale.reshape(-1)[0]) / float(out.scale.reshape(-1)[0])
    if bool(is_power_of_two(ratio)):
        e = int(np.round(np.log2(ratio)))
        num = acc << e if e >= 0 else acc
        den = np.asarray(count, dtype=np.int64) << (-e if e < 0 else 0)
        ctx.note("requant: shift + exact divide by count")
        y = rounding_divide(num, den, ctx.rounding) + out.zp64(acc.ndim)
        return np.clip(y, out.qmin, out.qmax).astype(out.dtype)
    multiplier = ratio / np.asarray(count, dtype=np.float64)
    return ctx.requantize(acc, multiplier, out)


@register_kernel("GlobalAveragePool", family="pool")
def global_average_pool(ctx: KernelContext, ins: list[Any], out: QParams) -> np.ndarray:
    x = per_tensor(ins[0], "GlobalAveragePool input")
    axes = tuple(range(2, x.q.ndim))
    count = int(np.prod([x.q.shape[a] for a in axes]))
    acc = ctx.accumulate(x.centered().sum(axis=axes, keepdims=True))
    return _average(ctx, acc, np.asarray(count), x, out)


def _window_sum(x: np.ndarray, kernel, strides, pads, ho: int, wo: int) -> np.ndarray:
    """Window sums in ``x``'s dtype, added row by row in window order (int64 exact; float32 as a CPU
    kernel adds them)."""
    pt, pl, pb, pr = pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    acc = np.zeros(x.shape[:2] + (ho, wo), dtype=x.dtype)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            acc += xp[
                :,
                :,
                i : i + strides[0] * (ho - 1) + 1 : strides[0],
                j : j + strides[1] * (wo - 1) + 1 : strides[1],
            ]
    return acc


@register_kernel("AveragePool", family="pool")
def average_pool(ctx: KernelContext, ins: list[Any], out: QParams) -> np.ndarray:
    x = per_tensor(ins[0], "AveragePool input")
    if x.q.ndim != 4:
        raise Fallback("only 2-D average pooling has an integer kernel")
    if int(ctx.attr("ceil_mode", 0)):
        raise Fallback("ceil_mode=1 average pooling")
    if list(ctx.attr("dilations", [1, 1])) != [1, 1]:
        raise Fallback("dilated average pooling")
    kernel = list(ctx.attr("kernel_shape"))
    strides = list(ctx.attr("strides", [1, 1]))
    pads = conv_pads(ctx, x.q.shape[2:], tuple(kernel), strides, [1, 1])
    h, w = x.q.shape[2:]
    ho = (h + pads[0] + pads[2] - kernel[0]) // strides[0] + 1
    wo = (w + pads[1] + pads[3] - kernel[1]) // strides[1] + 1
    if int(ctx.attr("count_include_pad", 0)):
        count = np.full((1, 1, ho, wo), kernel[0] * kernel[1], dtype=np.int64)
    else:
        count = _window_sum(np.ones((1, 1, h, w), dtype=np.int64), kernel, strides, pads, ho, wo)
    if ctx.requant == "float32":
        # onnxruntime's QLinearAveragePool: dequantize to float32, average in float32, quantize (ties
        # to even); with equal input and output scales half the 2x2 windows land on a tie, which the
        # float rounding of the sum decides.
        ctx.note("float32 average of dequantized values (onnxruntime's QLinearAveragePool)")
        values = x.centered().astype(np.float32) * np.float32(x.params.scale.reshape(-1)[0])
        mean = _window_sum(values, kernel, strides, pads, ho, wo) / count.astype(np.float32)
        return quantize_linear(mean, out)
    acc = ctx.accumulate(_window_sum(x.centered(), kernel, strides, pads, ho, wo))
    return _average(ctx, acc, count, x, out)
