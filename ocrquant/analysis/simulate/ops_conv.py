"""Conv (plain, depthwise, grouped; strides, pads, dilations) and ConvTranspose in integers.

Sums of int8 x int8 products are computed with float64 GEMMs: every product and partial sum is an
integer below 2^53 (|x - zp| <= 255, |w| <= 128, at most ~10^5 terms), so each float64 operation is
exact whatever the summation order and the result equals an integer MAC array's. The int32
accumulator is then checked (saturating) before requantisation.
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


def conv_pads(
    ctx: KernelContext, spatial: tuple[int, int], kernel: tuple[int, int], strides, dilations
) -> list[int]:
    """ONNX padding (pads, or auto_pad SAME_UPPER / SAME_LOWER / VALID) as [top, left, bottom, right]."""
    auto = ctx.attr("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        return list(ctx.attr("pads", [0, 0, 0, 0]))
    if auto == "VALID":
        return [0, 0, 0, 0]
    begin, end = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return begin + end


def _weight_axis_ok(w: QTensor, axis: int) -> None:
    if not w.params.per_tensor and (w.params.axis or 0) % w.q.ndim != axis:
        raise Fallback(
            f"weight scales are per-channel along axis {w.params.axis}, not the output-channel axis"
        )


def conv2d_sum(x: np.ndarray, w: np.ndarray, strides, pads, dilations, group: int) -> np.ndarray:
    """Exact integer convolution sums (float64 arrays holding integers), NCHW x OIHW -> NOHW."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    sh, sw = strides
    dh, dw = dilations
    pt, pl, pb, pr = pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    ho = (h + pt + pb - ((kh - 1) * dh + 1)) // sh + 1
    wo = (wd + pl + pr - ((kw - 1) * dw + 1)) // sw + 1
    og = o // group
    if group == 1:  # im2col + one GEMM: (O, C*kh*kw) @ (C*kh*kw, N*Ho*Wo)
        cols = np.empty((c, kh, kw, n, ho, wo), dtype=np.float64)
        for i in range(kh):
            for j in range(kw):
                cols[:, i, j] = xp[
                    :, :, i * dh : i * dh + sh * (ho - 1) + 1 : sh, j * dw : j * dw + sw * (wo - 1) + 1 : sw
                ].transpose(1, 0, 2, 3)
        out = w.reshape(o, c * kh * kw) @ cols.reshape(c * kh * kw, n * ho * wo)
        return out.reshape(o, n, ho, wo).transpose(1, 0, 2, 3)
    out = np.zeros((n, o, ho * wo), dtype=np.float64)
    for i in range(kh):
        for j in range(kw):
            xs = xp[:, :, i * dh : i * dh + sh * (ho - 1) + 1 : sh, j * dw : j * dw + sw * (wo - 1) + 1 : sw]
            xs = xs.reshape(n, c, ho * wo)
            if cg == 1:  # depthwise (with channel multiplier og)
                xr = np.repeat(xs, og, axis=1) if og > 1 else xs
                out += xr * w[:, 0, i, j][None, :, None]
            else:
                for g in range(group):
                    out[:, g * og : (g + 1) * og] += np.matmul(
                        w[g * og : (g + 1) * og, :, i, j], xs[:, g * cg : (g + 1) * cg]
                    )
    return out.reshape(n, o, ho, wo)


@register_kernel("Conv", family="conv", quantized_inputs=(0, 1))
def conv(ctx: KernelContext, ins: list[Any], out: QParams) -> np.ndarray:
    x, w = per_tensor(ins[0], "Conv input"), ins[1]
    bias = ins[2] if len(ins) > 2 else None
    if x.q.ndim != 4:
        raise Fallback("only 2-D convolution (4-D tensors) has an integer kernel")
    _weight_axis_ok(w, 0)
    kh, kw = w.q.shape[2:]
    strides = list(ctx.attr("strides", [1, 1]))
    dilations = list(ctx.attr("dilations", [1, 1]))
    pads = conv_pads(ctx, x.q.shape[2:], (kh, kw), strides, dilations)
    acc = conv2d_sum(
        x.centered().astype(np.float64),
        w.centered().astype(np.float64),
        strides,
        pads,
        dilations,
        int(ctx.attr("group", 1)),
    )
    acc_scale = x.params.scale.astype(np.float64) * w.params.scale.astype(np.float64)
    acc = ctx.accumulate(acc)
    if bias is not None:
        acc = acc + to_accumulator_scale(bias, np.broadcast_to(acc_scale, (acc.shape[1],)), 4)
        acc = ctx.accumulate(acc)
    multiplier = ctx.product_multiplier(x.params.scale, w.params.scale, out.scale)
    multiplier = np.broadcast_to(multiplier, (acc.shape[1],))
    return ctx.requantize(acc, multiplier.reshape(1, -1, 1, 1), out)


@register_kernel("ConvTranspose", family="conv", quantized_inputs=(0, 1))
def conv_transpose(ctx: KernelContext, ins: list[Any], out: QParams) -> np.ndarray:
    x, w = per_tensor(ins[0], "ConvTranspose input"), ins[1]
    bias = ins[2] if len(ins) > 2 else None
    if x.q.ndim != 4:
        raise Fallback("only 2-D transposed convolution has an integer kernel")
    group = int(ctx.attr("group", 1))
    _weight_axis_ok(w, 1)
    xc, wc = x.centered().astype(np.float64), w.centered().astype(np.float64)
    n, cin, h, wd = xc.shape
    _, cog, kh, kw = wc.shape
    sh, sw = ctx.attr("strides", [1, 1])
    dh, dw = ctx.attr("dilations", [1, 1])
    oph, opw = ctx.attr("output_padding", [0, 0])
    full_h, full_w = (h - 1) * sh + (kh - 1) * dh + 1 + oph, (wd - 1) * sw + (kw - 1) * dw + 1 + opw
    full = np.zeros((n, cog * group, full_h, full_w), dtype=np.float64)
    cig = cin // group
    xr = xc.reshape(n, cin, h * wd)
    for i in range(kh):
        for j in range(kw):
            for g in range(group):
                contrib = np.matmul(wc[g * cig : (g + 1) * cig, :, i, j].T, xr[:, g * cig : (g + 1) * cig])
                full[
                    :,
                    g * cog : (g + 1) * cog,
                    i * dh : i * dh + sh * (h - 1) + 1 : sh,
                    j * dw : j * dw + sw * (wd - 1) + 1 : sw,
                ] += contrib.reshape(n, cog, h, wd)
    out_shape = ctx.attr("output_shape")
    if out_shape:
        pads = []
        for total in (full_h - out_shape[-2], full_w - out_shape[-1]):
            small, big = total // 2, total - total // 2
            pads.append((big, small) if ctx.attr("auto_pad", "NOTSET") == "SAME_LOWER" else (small, big))
        pt, pb = pads[0]
        pl, pr = pads[1]
    else:
        pt, pl, pb, pr = ctx.attr("pads", [0, 0, 0, 0])
    acc = full[:, :, pt : full_h - pb, pl : full_w - pr]
    cout = acc.shape[1]
    acc_scale = np.broadcast_to(
        x.params.scale.astype(np.float64) * w.params.scale.astype(np.float64), (cout,)
    )
    acc = ctx.accumulate(acc)
    if bias is not None:
        acc = ctx.accumulate(acc + to_accumulator_scale(bias, acc_scale, 4))
    multiplier = np.broadcast_to(ctx.product_multiplier(x.params.scale, w.params.scale, out.scale), cout)
    return ctx.requantize(acc, multiplier.reshape(1, -1, 1, 1), out)
