"""A QDQ ONNX model as a differentiable torch module, for algorithms that learn from the output.

Why: bias correction and AdaRound tune one layer at a time against that layer's float output, which
cannot see what the *task* does with the error (a detection map's error matters only near the
decision threshold). Learning a few parameters through the whole fake-quantized network against the
float model's output needs gradients through every op, Q/DQ included. This module interprets the
QDQ graph node by node with torch ops: each Quantize -> Dequantize pair is fake quantization with a
straight-through gradient (zero outside the clipping range), weights stay the model's integers, and
what is learned is kept in the layout onnxruntime fuses:

* a multiplier per weight scale (per output channel): the integers do not change, so the pair-safe
  AVX2 bound of :mod:`ocrquant.quantization.saturation` and any 7-bit grid still hold;
* every Conv / Gemm bias, written back as int32 on the grid ``input scale x new weight scale``.

* optionally (``learn_activations``), a multiplier per activation scale. onnxruntime's fusions need
  some activation scales to stay equal (Concat, Resize, MaxPool pass their input's scale on), so
  scale initializers of equal value share one multiplier: what was equal stays equal. Zero points
  and integer ranges do not change.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from ocrquant.errors import OcrQuantError
from ocrquant.quantization.graph import attributes

Tensor = torch.Tensor
OpFn = Callable[[list[Any], dict[str, Any]], Tensor]

#: ONNX op type -> torch implementation (inputs in ONNX order, attributes as a dict)
OPS: dict[str, OpFn] = {}


def op(*names: str) -> Callable[[OpFn], OpFn]:
    def deco(fn: OpFn) -> OpFn:
        for n in names:
            OPS[n] = fn
        return fn

    return deco


def _pads(a: dict[str, Any]) -> tuple[int, int]:
    p = list(a.get("pads", [0, 0, 0, 0]))
    if p[0] != p[2] or p[1] != p[3]:
        raise OcrQuantError(f"asymmetric padding {p} is not supported by the torch interpreter")
    return p[0], p[1]


def _window_pads(x: Tensor, a: dict[str, Any], kernel: list[int]) -> list[int]:
    """ONNX pads [top, left, bottom, right] of a windowed op, ``auto_pad`` resolved as onnxruntime does:
    SAME_* pads so that out = ceil(in / stride), the odd pixel at the end (UPPER) or the start (LOWER).
    PP-OCRv6 rec's stem MaxPool is 2x2, stride 1, SAME_UPPER: one pixel on the right and bottom only."""
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        return [0, 0, 0, 0] if auto == "VALID" else list(a.get("pads", [0, 0, 0, 0]))
    strides = a.get("strides", [1] * len(kernel))
    dilations = a.get("dilations", [1] * len(kernel))
    begin, end = [], []
    for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations, strict=True):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return begin + end


def _padded(x: Tensor, a: dict[str, Any], kernel: list[int], fill: float) -> tuple[Tensor, tuple[int, int]]:
    """The input and the symmetric padding to give torch: asymmetric pads are applied here with ``fill``
    (0 for a convolution, -inf for a max pool), since torch's ops take one pad per dimension."""
    top, left, bottom, right = _window_pads(x, a, kernel)
    if top == bottom and left == right:
        return x, (top, left)
    return F.pad(x, (left, right, top, bottom), value=fill), (0, 0)


@op("Conv")
def _conv(i: list[Any], a: dict[str, Any]) -> Tensor:
    bias = i[2] if len(i) > 2 else None
    x, pads = _padded(i[0], a, list(i[1].shape[2:]), 0.0)
    return F.conv2d(x, i[1], bias, a.get("strides", 1), pads, a.get("dilations", 1), a.get("group", 1))


@op("ConvTranspose")
def _conv_transpose(i: list[Any], a: dict[str, Any]) -> Tensor:
    bias = i[2] if len(i) > 2 else None
    out_pad = tuple(a.get("output_padding", (0, 0)))
    return F.conv_transpose2d(
        i[0], i[1], bias, a.get("strides", 1), _pads(a), out_pad, a.get("group", 1), a.get("dilations", 1)
    )


@op("BatchNormalization")
def _batch_norm(i: list[Any], a: dict[str, Any]) -> Tensor:
    return F.batch_norm(i[0], i[3], i[4], i[1], i[2], training=False, eps=a.get("epsilon", 1e-5))


@op("Gemm")
def _gemm(i: list[Any], a: dict[str, Any]) -> Tensor:
    x = i[0].t() if a.get("transA", 0) else i[0]
    w = i[1].t() if a.get("transB", 0) else i[1]
    out = a.get("alpha", 1.0) * (x @ w)
    return out + a.get("beta", 1.0) * i[2] if len(i) > 2 and i[2] is not None else out


@op("MaxPool")
def _max_pool(i: list[Any], a: dict[str, Any]) -> Tensor:
    x, pads = _padded(i[0], a, a["kernel_shape"], float("-inf"))
    strides = a.get("strides", a["kernel_shape"])
    return F.max_pool2d(x, a["kernel_shape"], strides, pads, ceil_mode=bool(a.get("ceil_mode", 0)))


@op("AveragePool")
def _avg_pool(i: list[Any], a: dict[str, Any]) -> Tensor:
    top, left, bottom, right = _window_pads(i[0], a, a["kernel_shape"])
    if top != bottom or left != right:
        raise OcrQuantError("AveragePool with asymmetric padding is not supported by the torch interpreter")
    return F.avg_pool2d(
        i[0],
        a["kernel_shape"],
        a.get("strides", a["kernel_shape"]),
        (top, left),
        ceil_mode=bool(a.get("ceil_mode", 0)),
        count_include_pad=bool(a.get("count_include_pad", 0)),
    )


@op("Resize")
def _resize(i: list[Any], a: dict[str, Any]) -> Tensor:
    if a.get("mode", b"nearest") != b"nearest":
        raise OcrQuantError(f"Resize mode {a.get('mode')} is not supported by the torch interpreter")
    if len(i) > 3 and i[3] is not None and i[3].numel():
        return F.interpolate(i[0], size=[int(v) for v in i[3].tolist()[2:]], mode="nearest")
    sc = [float(v) for v in i[2].tolist()]
    return F.interpolate(i[0], scale_factor=(sc[2], sc[3]), mode="nearest")


@op("Reshape")
def _reshape(i: list[Any], a: dict[str, Any]) -> Tensor:
    shape = [int(v) for v in i[1].tolist()]
    shape = [i[0].shape[k] if v == 0 else v for k, v in enumerate(shape)]
    return i[0].reshape(shape)


@op("Squeeze", "Unsqueeze")
def _squeeze(i: list[Any], a: dict[str, Any]) -> Tensor:
    x = i[0]
    if len(i) > 1 and i[1] is not None:
        axes = [int(v) for v in i[1].tolist()]
    elif "axes" in a:
        axes = list(a["axes"])
    elif a["_op"] == "Squeeze":
        axes = [d for d, n in enumerate(x.shape) if n == 1]  # no axes: every dimension of size 1
    else:
        raise OcrQuantError("Unsqueeze without axes")
    if a["_op"] == "Squeeze":
        return x.squeeze(tuple(ax % x.ndim for ax in axes))
    for ax in sorted(ax % (x.ndim + len(axes)) for ax in axes):
        x = x.unsqueeze(ax)
    return x


@op("Slice")
def _slice(i: list[Any], a: dict[str, Any]) -> Tensor:
    starts, ends = i[1].tolist(), i[2].tolist()
    axes = i[3].tolist() if len(i) > 3 and i[3] is not None else list(range(len(starts)))
    steps = i[4].tolist() if len(i) > 4 and i[4] is not None else [1] * len(starts)
    index = [slice(None)] * i[0].ndim
    for s, e, ax, st in zip(starts, ends, axes, steps, strict=True):
        if st < 1:
            raise OcrQuantError(f"Slice with step {st} is not supported by the torch interpreter")
        index[ax] = slice(int(s), int(min(e, 2**62)), int(st))
    return i[0][tuple(index)]


@op("Split")
def _split(i: list[Any], a: dict[str, Any]) -> tuple[Tensor, ...]:
    axis = a.get("axis", 0)
    sizes = i[1].tolist() if len(i) > 1 and i[1] is not None else a.get("split")
    if sizes is None:
        sizes = i[0].shape[axis] // a["_outputs"]
    return torch.split(i[0], sizes, dim=axis)


OPS.update(
    {
        "Add": lambda i, a: i[0] + i[1],
        "Sub": lambda i, a: i[0] - i[1],
        "Mul": lambda i, a: i[0] * i[1],
        "Div": lambda i, a: i[0] / i[1],
        "Pow": lambda i, a: torch.pow(i[0], i[1]),
        "Sqrt": lambda i, a: torch.sqrt(i[0]),
        "Erf": lambda i, a: torch.erf(i[0]),
        "Gelu": lambda i, a: F.gelu(i[0]),
        "Tanh": lambda i, a: torch.tanh(i[0]),
        "Relu": lambda i, a: torch.relu(i[0]),
        "Sigmoid": lambda i, a: torch.sigmoid(i[0]),
        "HardSigmoid": lambda i, a: torch.clamp(a.get("alpha", 0.2) * i[0] + a.get("beta", 0.5), 0, 1),
        "HardSwish": lambda i, a: F.hardswish(i[0]),
        "Clip": lambda i, a: torch.clamp(
            i[0],
            i[1] if len(i) > 1 and i[1] is not None else a.get("min"),
            i[2] if len(i) > 2 and i[2] is not None else a.get("max"),
        ),
        "Softmax": lambda i, a: torch.softmax(i[0], dim=a.get("axis", -1)),
        "GlobalAveragePool": lambda i, a: i[0].mean(dim=tuple(range(2, i[0].ndim)), keepdim=True),
        "ReduceMean": lambda i, a: i[0].mean(
            dim=tuple(a.get("axes", range(i[0].ndim))), keepdim=bool(a.get("keepdims", 1))
        ),
        "MatMul": lambda i, a: torch.matmul(i[0], i[1]),
        "Concat": lambda i, a: torch.cat(list(i), dim=a["axis"]),
        "Transpose": lambda i, a: (
            i[0].permute(*a["perm"]) if "perm" in a else i[0].permute(*reversed(range(i[0].ndim)))
        ),
        "Flatten": lambda i, a: i[0].reshape(int(np.prod(i[0].shape[: a.get("axis", 1)])), -1),
        "Shape": lambda i, a: torch.tensor(list(i[0].shape), dtype=torch.int64),
        "Gather": lambda i, a: torch.index_select(i[0], a.get("axis", 0), i[1].long().reshape(-1)).reshape(
            i[0].shape[: a.get("axis", 0)] + i[1].shape + i[0].shape[a.get("axis", 0) + 1 :]
        ),
        "Identity": lambda i, a: i[0],
        "Cast": lambda i, a: i[0],
    }
)


def _fake_quant_learned(
    x: Tensor, scale: Tensor, zero: float, lo: int, hi: int, out_scale: Tensor, out_zero: float
) -> Tensor:
    """Quantize -> dequantize with a learned ``scale``. The gradient passes straight through the
    rounding (so it is 1 for ``x`` inside the range and 0 outside), and reaches ``scale`` as in LSQ
    (Esser et al. 2020): a wider step trades clipping error for rounding error, and the output loss
    decides the balance.

    ``out_scale`` / ``out_zero``: the DequantizeLinear's own. They are the Quantize's on almost every
    edge; a legal QDQ edge may rescale (a Mul by a positive constant folded into it)."""
    v = x / scale
    r = torch.round(v).detach() + (v - v.detach())  # forward: exactly round(v); backward: identity
    return (torch.clamp(r + zero, lo, hi) - out_zero) * out_scale


class _FakeQuant(torch.autograd.Function):
    """Quantize -> dequantize with fixed scales: the same values and the same gradient for ``x`` as
    :func:`_fake_quant_learned` (identical float operations, in the same order: test_distill checks
    both bit for bit), in one autograd node that keeps only the in-range mask for the backward pass.

    Why: autograd through the composite keeps a float copy per op and runs seven elementwise kernels
    each way; on PP-OCRv3 det at 544x960 the Q/DQ arithmetic was half of a distill step's time."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, scale: Tensor, zero: float, lo: int, hi: int, out_scale: Tensor, out_zero: float
    ) -> Tensor:
        # + zero even when it is 0: round(-0.3) is -0.0, and the composite's straight-through term
        # (v - v) turns it into +0.0
        a = torch.round(x / scale).add_(zero)
        out = a.clamp(lo, hi)
        ctx.save_for_backward(out.ne(a), scale, out_scale)  # clipped: no gradient (NaN included)
        return out.sub_(out_zero).mul_(out_scale)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        clipped, scale, out_scale = ctx.saved_tensors
        g = (grad * out_scale).masked_fill_(clipped, 0.0).div_(scale)
        return g, None, None, None, None, None, None


def _fake_quant(
    x: Tensor, scale: Tensor, zero: float, lo: int, hi: int, out_scale: Tensor, out_zero: float
) -> Tensor:
    """Quantize -> dequantize, the straight-through estimator; a scale being learned gets its gradient
    (:func:`_fake_quant_learned`), fixed scales take the one-node path (:class:`_FakeQuant`)."""
    if scale.requires_grad or out_scale.requires_grad:
        return _fake_quant_learned(x, scale, zero, lo, hi, out_scale, out_zero)
    return _FakeQuant.apply(x, scale, zero, lo, hi, out_scale, out_zero)


class QDQModule(torch.nn.Module):
    """Interpret a QDQ model; learn per-channel weight-scale multipliers and biases (see module doc)."""

    def __init__(self, model: onnx.ModelProto, learn_activations: bool = False) -> None:
        super().__init__()
        self.model = model
        graph = model.graph
        self.consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        for n in graph.node:
            if n.op_type == "Constant":
                self.consts[n.output[0]] = numpy_helper.to_array(attributes(n)["value"])
        self.nodes = [n for n in graph.node if n.op_type != "Constant"]
        unknown = sorted({n.op_type for n in self.nodes} - set(OPS) - {"QuantizeLinear", "DequantizeLinear"})
        if unknown:
            raise OcrQuantError(f"the torch interpreter has no implementation of {', '.join(unknown)}")
        producer = {o: n for n in self.nodes for o in n.output}
        readers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            for name in n.input:
                readers.setdefault(name, []).append(n)
        self.input_name = graph.input[0].name
        self.output_name = graph.output[0].name
        # Weight DQ outputs: (integers, zero point, scale, axis, scale initializer name)
        self.weights: dict[str, tuple[Tensor, Tensor, Tensor, int, str]] = {}
        self.log_alpha = torch.nn.ParameterDict()
        self._alpha_key: dict[str, str] = {}
        for n in self.nodes:
            rd = readers.get(n.output[0], [])
            if (
                n.op_type == "DequantizeLinear"
                and n.input[0] in self.consts
                and self.consts[n.input[0]].ndim >= 2
                and rd
                and all(r.op_type in ("Conv", "Gemm", "MatMul") and r.input[1] == n.output[0] for r in rd)
            ):
                q = self.consts[n.input[0]].astype(np.float32)
                s = self.consts[n.input[1]].astype(np.float32)
                zp = self.consts[n.input[2]].astype(np.float32) if len(n.input) > 2 else np.zeros_like(s)
                self.weights[n.output[0]] = (
                    torch.from_numpy(q),
                    torch.from_numpy(zp),
                    torch.from_numpy(s),
                    attributes(n).get("axis", 1),
                    n.input[1],
                )
                key = f"w{len(self._alpha_key)}"
                self._alpha_key[n.output[0]] = key
                self.log_alpha[key] = torch.nn.Parameter(torch.zeros(s.shape))
        # Activation scales: (Q or DQ of a computed tensor) scale initializer -> shared multiplier
        self.log_beta = torch.nn.ParameterDict()
        self._act_key: dict[str, str] = {}
        if learn_activations:
            initializers = {i.name for i in graph.initializer}  # export rewrites initializers only
            by_value: dict[bytes, str] = {}
            for n in self.nodes:
                if (
                    n.op_type in ("QuantizeLinear", "DequantizeLinear")
                    and n.input[0] not in self.consts
                    and n.input[1] in initializers
                    and self.consts[n.input[1]].size == 1
                ):
                    key = by_value.setdefault(
                        self.consts[n.input[1]].astype(np.float32).tobytes(), f"a{len(by_value)}"
                    )
                    self._act_key[n.input[1]] = key
                    if key not in self.log_beta:
                        self.log_beta[key] = torch.nn.Parameter(torch.zeros(()))
        # Biases: float initializers, or int32 initializers behind a DequantizeLinear (onnxruntime's layout)
        self.bias = torch.nn.ParameterDict()
        self._bias_key: dict[str, str] = {}
        self._bias_int: dict[str, tuple[str, str, str, str]] = {}  # DQ out -> (ints, scale, in scale, weight)
        for n in self.nodes:
            if n.op_type not in ("Conv", "Gemm") or len(n.input) < 3 or not n.input[2]:
                continue
            name, p = n.input[2], producer.get(n.input[2])
            if name in self.consts:
                value = self.consts[name].astype(np.float32)
            elif p is not None and p.op_type == "DequantizeLinear" and p.input[0] in self.consts:
                zp = self.consts[p.input[2]] if len(p.input) > 2 else 0
                value = ((self.consts[p.input[0]].astype(np.float64) - zp) * self.consts[p.input[1]]).astype(
                    np.float32
                )
                # the bias grid is the input scale the Conv reads: its DequantizeLinear's, which a
                # legal edge may hold different from the Quantize's (a folded Mul by a constant)
                x_dq = producer.get(n.input[0])
                if x_dq is None or x_dq.op_type != "DequantizeLinear" or n.input[1] not in self.weights:
                    continue
                self._bias_int[name] = (p.input[0], p.input[1], x_dq.input[1], n.input[1])
            else:
                continue
            key = f"b{len(self._bias_key)}"
            self._bias_key[name] = key
            self.bias[key] = torch.nn.Parameter(torch.from_numpy(value))
        self._const_t = {k: torch.from_numpy(np.array(v)) for k, v in self.consts.items()}

    def activation_scale(self, name: str) -> Tensor:
        """The scale initializer ``name`` of an activation Q/DQ, times its learned multiplier."""
        s = self._const_t[name].float()
        return s * torch.exp(self.log_beta[self._act_key[name]]) if name in self._act_key else s

    def weight_scale(self, name: str) -> Tensor:
        _, _, s, _, _ = self.weights[name]
        return s * torch.exp(self.log_alpha[self._alpha_key[name]])

    def _weight(self, name: str) -> Tensor:
        q, zp, _, axis, _ = self.weights[name]
        scale = self.weight_scale(name)
        if scale.ndim:
            shape = [1] * q.ndim
            shape[axis] = -1
            return (q - zp.reshape(shape)) * scale.reshape(shape)
        return (q - zp) * scale

    def forward(self, x: Tensor, until: str | None = None) -> Tensor:
        """The graph output for input ``x`` (or the tensor ``until``, as soon as it is computed)."""
        env: dict[str, Any] = {self.input_name: x}
        pending_q: dict[str, tuple[Tensor, Tensor, float, int, int]] = {}

        def value(name: str) -> Any:
            if not name:
                return None
            if name in env:
                return env[name]
            if name in self.weights:
                return self._weight(name)
            if name in self._bias_key:
                return self.bias[self._bias_key[name]]
            if name in self._const_t:
                return self._const_t[name]
            raise OcrQuantError(f"torch interpreter: tensor '{name}' has no producer")

        for node in self.nodes:
            out = node.output[0]
            if node.op_type == "QuantizeLinear":
                zp = self.consts[node.input[2]]
                lo, hi = (-128, 127) if zp.dtype == np.int8 else (0, 255)
                pending_q[out] = (
                    value(node.input[0]),
                    self.activation_scale(node.input[1]),
                    float(zp),
                    lo,
                    hi,
                )
                continue
            if node.op_type == "DequantizeLinear":
                if out in self.weights or out in self._bias_key:
                    continue
                if node.input[0] in pending_q:
                    # the DQ's own scale and zero point: the Q's unless the edge rescales
                    zp_dq = float(self.consts[node.input[2]]) if len(node.input) > 2 else 0.0
                    env[out] = _fake_quant(
                        *pending_q[node.input[0]], self.activation_scale(node.input[1]), zp_dq
                    )
                else:
                    zp = self.consts[node.input[2]].astype(np.float32) if len(node.input) > 2 else 0.0
                    const = (self.consts[node.input[0]].astype(np.float32) - zp) * self.consts[node.input[1]]
                    env[out] = torch.from_numpy(np.asarray(const, dtype=np.float32))
            else:
                attrs = attributes(node) | {"_op": node.op_type, "_outputs": len(node.output)}
                result = OPS[node.op_type]([value(i) for i in node.input], attrs)
                if isinstance(result, (tuple, list)):
                    env.update(zip(node.output, result, strict=False))
                else:
                    env[out] = result
            if until is not None and until in env:
                return env[until]
        return env[self.output_name if until is None else until]

    def export(self) -> onnx.ModelProto:
        """A copy of the model with the learned weight scales, activation scales and biases written in."""
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        inits = {i.name: i for i in model.graph.initializer}
        with torch.no_grad():
            for name in self._act_key:
                new = self.activation_scale(name).numpy().astype(np.float32).reshape(self.consts[name].shape)
                inits[name].CopyFrom(numpy_helper.from_array(new, name))
            for name, (_, _, _, _, scale_name) in self.weights.items():
                new = self.weight_scale(name).numpy().astype(np.float32)
                inits[scale_name].CopyFrom(numpy_helper.from_array(new, scale_name))
            for name, key in self._bias_key.items():
                b = self.bias[key].numpy().astype(np.float64)
                if name in self._bias_int:
                    ints, scale_name, x_scale, w_dq = self._bias_int[name]
                    grid = (
                        float(self.activation_scale(x_scale))
                        * self.weight_scale(w_dq).numpy().astype(np.float64)
                    ).astype(np.float32)
                    q = np.clip(np.round(b / grid), np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(
                        np.int32
                    )
                    inits[ints].CopyFrom(numpy_helper.from_array(q, ints))
                    inits[scale_name].CopyFrom(numpy_helper.from_array(grid, scale_name))
                else:
                    inits[name].CopyFrom(numpy_helper.from_array(b.astype(np.float32), name))
        return model
