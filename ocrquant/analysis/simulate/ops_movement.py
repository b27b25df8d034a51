"""Ops that only move or select values (reshape, transpose, slice, max-pool, nearest resize) and
bilinear resize.

Selecting values commutes with dequantisation (scale > 0, so max is preserved too), so these ops run
on the integers themselves (through the same single-node executor as float fallbacks, fed integer
tensors); when the output's scale or zero point differs from the input's, a requantisation follows.
Bilinear resize interpolates with 10-bit fixed-point weights and requantizes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ocrquant.analysis.simulate.ops_eltwise import rescale_to
from ocrquant.analysis.simulate.qtypes import Fallback, QParams, QTensor
from ocrquant.analysis.simulate.registry import KernelContext, per_tensor, register_kernel

WEIGHT_BITS = 10


def _plain(v: Any) -> Any:
    """Non-data inputs (shapes, axes, scales) are passed as the arrays they are."""
    if isinstance(v, QTensor):
        raise Fallback("a shape/index input is itself quantized")
    return v


def run_on_integers(ctx: KernelContext, ins: list[Any], out: QParams) -> np.ndarray:
    x = per_tensor(ins[0], f"{ctx.node.op_type} input")
    y = ctx.run_node(ctx.node, [x.q] + [_plain(v) for v in ins[1:]])[0]
    return rescale_to(ctx, QTensor(y, x.params), out)


for _op in (
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Flatten",
    "Identity",
    "Slice",
    "Gather",
    "MaxPool",
    "DepthToSpace",
    "SpaceToDepth",
    "Tile",
    "Expand",
):
    register_kernel(_op, family="movement")(run_on_integers)


@register_kernel("Resize", family="movement")
def resize(ctx: KernelContext, ins: list[Any], out: QParams) -> np.ndarray:
    mode = ctx.attr("mode", "nearest")
    if mode == "nearest":
        return run_on_integers(ctx, ins, out)
    if mode != "linear":
        raise Fallback(f"Resize mode '{mode}' has no integer kernel")
    return bilinear(ctx, ins, out)


def _source_coords(ctx: KernelContext, out_size: int, in_size: int, scale: float) -> np.ndarray:
    """ONNX coordinate_transformation_mode: output index -> source coordinate (float64)."""
    mode = ctx.attr("coordinate_transformation_mode", "half_pixel")
    o = np.arange(out_size, dtype=np.float64)
    if mode == "asymmetric":
        return o / scale
    if mode == "align_corners":
        return o * (in_size - 1) / (out_size - 1) if out_size > 1 else np.zeros_like(o)
    if mode == "pytorch_half_pixel":
        return (o + 0.5) / scale - 0.5 if out_size > 1 else np.zeros_like(o)
    if mode == "half_pixel":
        return (o + 0.5) / scale - 0.5
    raise Fallback(f"coordinate_transformation_mode '{mode}' has no integer kernel")


def _taps(
    ctx: KernelContext, out_size: int, in_size: int, scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    src = np.clip(_source_coords(ctx, out_size, in_size, scale), 0, in_size - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = np.rint((src - i0) * (1 << WEIGHT_BITS)).astype(np.int64)
    return i0, i1, w1


def bilinear(ctx: KernelContext, ins: list[Any], out: QParams) -> np.ndarray:
    x = per_tensor(ins[0], "Resize input")
    if x.q.ndim != 4:
        raise Fallback("bilinear Resize of a non-4-D tensor")
    scales = ins[2] if len(ins) > 2 and ins[2] is not None and np.size(ins[2]) else None
    sizes = ins[3] if len(ins) > 3 and ins[3] is not None and np.size(ins[3]) else None
    n, c, h, w = x.q.shape
    if sizes is not None:
        oh, ow = int(sizes[2]), int(sizes[3])
        sy, sx = oh / h, ow / w
        if int(sizes[0]) != n or int(sizes[1]) != c:
            raise Fallback("Resize over batch/channel axes")
    elif scales is not None:
        if float(scales[0]) != 1 or float(scales[1]) != 1:
            raise Fallback("Resize over batch/channel axes")
        sy, sx = float(scales[2]), float(scales[3])
        oh, ow = int(np.floor(h * sy)), int(np.floor(w * sx))
    else:
        raise Fallback("Resize without scales or sizes")
    y0, y1, wy = _taps(ctx, oh, h, sy)
    x0, x1, wx = _taps(ctx, ow, w, sx)
    one = 1 << WEIGHT_BITS
    xc = x.centered()
    rows = xc[:, :, y0, :] * (one - wy)[None, None, :, None] + xc[:, :, y1, :] * wy[None, None, :, None]
    acc = rows[:, :, :, x0] * (one - wx) + rows[:, :, :, x1] * wx
    acc = ctx.accumulate(acc)
    multiplier = x.params.scale.astype(np.float64).reshape(()) / out.scale.astype(np.float64).reshape(())
    return ctx.requantize(acc, multiplier / float(one * one), out)
