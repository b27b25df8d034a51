"""Quantized tensors as the simulator carries them: integer values plus scale / zero point / axis."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ocrquant.analysis.simulate.fixedpoint import qrange


class Fallback(Exception):  # noqa: N818  (a signal, not an error: the node runs in float instead)
    """Raised by a kernel that cannot run this node in integers; the message says why."""


@dataclass
class QParams:
    """``real = (q - zero_point) * scale``; ``axis`` is None for per-tensor parameters."""

    scale: np.ndarray
    zero_point: np.ndarray
    dtype: np.dtype
    axis: int | None = None

    @property
    def per_tensor(self) -> bool:
        return self.scale.size == 1

    @property
    def bits(self) -> int:
        return np.dtype(self.dtype).itemsize * 8

    @property
    def qmin(self) -> int:
        return qrange(self.dtype)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.dtype)[1]

    def along(self, values: np.ndarray, ndim: int) -> np.ndarray:
        """Shape per-channel ``values`` to broadcast over a rank-``ndim`` tensor (per-tensor: scalar)."""
        values = np.asarray(values)
        if values.size == 1:
            return values.reshape(())
        axis = (self.axis if self.axis is not None else 1) % ndim
        shape = [1] * ndim
        shape[axis] = values.size
        return values.reshape(shape)

    def scale64(self, ndim: int = 0) -> np.ndarray:
        return self.along(self.scale.astype(np.float64), ndim)

    def zp64(self, ndim: int = 0) -> np.ndarray:
        return self.along(self.zero_point.astype(np.int64), ndim)

    def same_as(self, other: QParams) -> bool:
        return (
            np.dtype(self.dtype) == np.dtype(other.dtype)
            and self.scale.shape == other.scale.shape
            and np.array_equal(self.scale, other.scale)
            and np.array_equal(self.zero_point, other.zero_point)
        )


@dataclass
class QTensor:
    q: np.ndarray
    params: QParams

    def centered(self) -> np.ndarray:
        """``q - zero_point`` as int64 (the value a MAC array multiplies)."""
        return self.q.astype(np.int64) - self.params.zp64(self.q.ndim)

    def dequantize(self) -> np.ndarray:
        """ONNX DequantizeLinear in float32, as onnxruntime computes it."""
        p = self.params
        scale = p.along(p.scale.astype(np.float32), self.q.ndim)
        return (
            (self.q.astype(np.int32) - p.along(p.zero_point.astype(np.int32), self.q.ndim)).astype(np.float32)
            * scale
        ).astype(np.float32)


def quantize_linear(x: np.ndarray, params: QParams) -> np.ndarray:
    """ONNX QuantizeLinear: ``saturate(round_half_even(x / scale) + zp)`` computed in float32."""
    x = np.asarray(x, dtype=np.float32)
    scale = params.along(params.scale.astype(np.float32), x.ndim)
    zp = params.along(params.zero_point.astype(np.float32), x.ndim)
    y = np.rint(x / scale) + zp
    return np.clip(y, params.qmin, params.qmax).astype(params.dtype)
