"""The integer kernel registry: op type -> kernel function and what it needs from the graph.

Adding an op is one decorated function in the module of its family; the engine never branches on
op types. A kernel receives the node's inputs (``QTensor`` for inputs coming out of a
DequantizeLinear, plain arrays for constants such as shapes, None for absent optional inputs), the
output's quantization parameters (from the QuantizeLinear after the node) and a context; it returns
the output integers, or raises :class:`Fallback` to have the node run in float.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from ocrquant.analysis.simulate.fixedpoint import (
    is_power_of_two,
    requantize,
    requantize_float32,
    saturate_int32,
)
from ocrquant.analysis.simulate.qtypes import Fallback, QParams, QTensor

Kernel = Callable[["KernelContext", list[Any], QParams], np.ndarray]


@dataclass
class KernelSpec:
    op_type: str
    fn: Kernel
    family: str
    quantized_inputs: tuple[int, ...] | str  # input slots that must come from a DequantizeLinear; "all"

    def required_slots(self, node: onnx.NodeProto) -> list[int]:
        if self.quantized_inputs == "all":
            return [i for i, name in enumerate(node.input) if name]
        return [i for i in self.quantized_inputs if i < len(node.input) and node.input[i]]


KERNELS: dict[str, KernelSpec] = {}


def register_kernel(*op_types: str, family: str, quantized_inputs: tuple[int, ...] | str = (0,)):
    def deco(fn: Kernel) -> Kernel:
        for op in op_types:
            KERNELS[op] = KernelSpec(op, fn, family, quantized_inputs)
        return fn

    return deco


@dataclass
class KernelContext:
    """What a kernel may use besides its inputs: attributes, rounding, a float runner, notes."""

    node: onnx.NodeProto
    rounding: str
    run_node: Callable[[onnx.NodeProto, list[np.ndarray | None]], list[np.ndarray]]
    cache: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    overflows: int = 0
    requant: str = "fixed"  # see fixedpoint.REQUANT_MODES

    def attr(self, name: str, default: Any = None) -> Any:
        for a in self.node.attribute:
            if a.name == name:
                value = onnx.helper.get_attribute_value(a)
                return value.decode() if isinstance(value, bytes) else value
        return default

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def accumulate(self, acc: np.ndarray) -> np.ndarray:
        """Exact integer sums (float64 GEMM results) -> int64, then an int32 saturating accumulator."""
        acc = np.rint(acc).astype(np.int64) if acc.dtype.kind == "f" else acc.astype(np.int64)
        acc, over = saturate_int32(acc)
        if over:
            self.overflows += over
            self.note(f"int32 accumulator saturated {over}x")
        return acc

    def product_multiplier(self, a_scale: np.ndarray, b_scale: np.ndarray, out_scale: np.ndarray) -> Any:
        """``S_a * S_b / S_out`` (per output channel where ``b_scale`` is) for a product kernel.

        Exact (float64) for the fixed-point requantisation, which rounds it to an int32 multiplier
        anyway. In ``float32`` mode it is computed the way onnxruntime's QLinearConv/QLinearMatMul
        compute their output scales, ``(S_a * S_b) / S_out`` in float32: that multiplier's last bit
        decides rounding ties, and on det one differently rounded activation changes the output map
        visibly (final-output cosine vs onnxruntime's fused kernels 0.9953 with the float64 product,
        0.9994 with onnxruntime's)."""
        dtype = np.float32 if self.requant == "float32" else np.float64
        return (np.asarray(a_scale, dtype) * np.asarray(b_scale, dtype)) / np.asarray(out_scale, dtype)

    def requantize(self, acc: np.ndarray, multiplier: np.ndarray, out: QParams) -> np.ndarray:
        """Requantize to ``out`` (``multiplier`` already broadcastable) and note shift vs multiplier."""
        if self.requant == "float32":
            self.note("requant: float32 multiply, ties to even")
            return requantize_float32(acc, multiplier, out.zp64(acc.ndim), out.dtype)
        pow2 = bool(np.all(is_power_of_two(multiplier)))
        self.note("requant: shift" if pow2 else "requant: int32 multiplier + shift")
        return requantize(acc, multiplier, out.zp64(acc.ndim), out.dtype, self.rounding)


def per_tensor(t: QTensor, what: str) -> QTensor:
    if not t.params.per_tensor:
        raise Fallback(f"{what} has per-channel activation scales")
    return t


def to_accumulator_scale(bias: Any, acc_scale: np.ndarray, ndim: int, axis: int = 1) -> np.ndarray:
    """A bias as int32 in the accumulator's scale ``S_in * S_w`` (per output channel).

    A quantizer's int32 bias normally already has exactly that scale and is used as is; otherwise it
    is rescaled once, offline, as a compiler would.
    """
    shape = [1] * ndim
    shape[axis] = -1
    scale = np.broadcast_to(acc_scale.reshape(-1), (max(acc_scale.size, 1),))
    if isinstance(bias, QTensor):
        b_scale = np.broadcast_to(bias.params.scale.astype(np.float64).reshape(-1), bias.q.shape)
        if np.allclose(b_scale, scale, rtol=1e-6, atol=0) and not np.any(bias.params.zero_point):
            return bias.q.astype(np.int64).reshape(shape)
        real = bias.dequantize().astype(np.float64)
    else:
        real = np.asarray(bias, dtype=np.float64)
    return np.rint(real.reshape(-1) / scale).astype(np.int64).reshape(shape)
