"""The integer simulator: executes a QDQ ONNX model the way an integer accelerator would.

A compute node runs in integers when every input slot its kernel needs comes out of a
DequantizeLinear and its output goes only into QuantizeLinear nodes with one set of parameters:
the kernel then maps the DQ's integers straight to the Q's integers (the Q/DQ pair disappears, as
in an accelerator's compiled graph). Everything else runs in float through onnxruntime (a
"fallback", listed with its reason); QuantizeLinear nodes fed by float tensors (the model input,
fallback outputs) quantize as ONNX defines it, and DequantizeLinear nodes are evaluated only where
a float consumer or a graph output needs them.

Memory: a tensor is dropped as soon as its last consumer has run.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ocrquant.analysis.graph import GraphView, load_model
from ocrquant.analysis.simulate.executor import SingleNodeExecutor
from ocrquant.analysis.simulate.fixedpoint import REQUANT_MODES, ROUNDING_MODES
from ocrquant.analysis.simulate.qtypes import Fallback, QParams, QTensor, quantize_linear
from ocrquant.analysis.simulate.registry import KERNELS, KernelContext
from ocrquant.errors import OcrQuantError


@dataclass
class NodeReport:
    name: str
    op_type: str
    mode: str  # "integer" | "float"
    detail: str  # the requantisation used, or why the node fell back to float
    overflows: int = 0
    exact: int = 0  # with a reference run: output integers equal to the reference's
    total: int = 0
    max_diff: int = 0


@dataclass
class SimReport:
    nodes: list[NodeReport] = field(default_factory=list)

    def by_op(self) -> list[tuple[str, int, int, str]]:
        """(op type, integer count, float count, reasons for float) per op type."""
        integer, flt = Counter(), Counter()
        reasons: dict[str, Counter] = {}
        for r in self.nodes:
            (integer if r.mode == "integer" else flt)[r.op_type] += 1
            if r.mode == "float":
                reasons.setdefault(r.op_type, Counter())[r.detail] += 1
        ops = sorted(set(integer) | set(flt), key=lambda o: (-flt[o], o))
        return [(o, integer[o], flt[o], "; ".join(reasons.get(o, {}))) for o in ops]


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in ("value_float", "value_int", "value_floats", "value_ints"):
            return np.asarray(onnx.helper.get_attribute_value(a))
    return None


class Simulator:
    """``Simulator(model).run({input: array})`` -> outputs; ``.report`` says how each node ran."""

    def __init__(
        self, model: str | Path | onnx.ModelProto, rounding: str = "half_away", requant: str = "fixed"
    ) -> None:
        if rounding not in ROUNDING_MODES:
            raise OcrQuantError(f"unknown rounding mode '{rounding}' ({', '.join(ROUNDING_MODES)})")
        if requant not in REQUANT_MODES:
            raise OcrQuantError(f"unknown requantisation '{requant}' ({', '.join(REQUANT_MODES)})")
        self.model = model if isinstance(model, onnx.ModelProto) else load_model(model)
        self.rounding = rounding
        self.requant = requant
        self.view = GraphView(self.model)
        self.nodes = list(self.model.graph.node)
        self.consts: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in self.model.graph.initializer
        }
        for node in self.nodes:
            if node.op_type == "Constant":
                value = _constant_value(node)
                if value is not None:
                    self.consts[node.output[0]] = value
        self.executor = SingleNodeExecutor(list(self.model.opset_import))
        self.cache: dict[str, Any] = {}
        self.runtime_quantized: set[str] = set()
        if requant == "float32":  # mirror onnxruntime, including what it does to float-kept weights
            self._mirror_runtime_weight_quantization()
        self.plan: dict[int, tuple[str, str]] = {i: self._plan_node(n) for i, n in enumerate(self.nodes)}
        self.last_use = self._last_use()
        self.report = SimReport()
        self.int_outputs: dict[str, QTensor] = {}

    def _mirror_runtime_weight_quantization(self) -> None:
        """Quantize float weights the way onnxruntime's graph optimizer does at session creation.

        A Conv/ConvTranspose the QDQ model keeps float, but whose input comes from a
        DequantizeLinear and whose output goes only to QuantizeLinear, has its float weight
        quantized by onnxruntime (ORT_ENABLE_ALL, WeightBiasQuantization): int8 per tensor,
        asymmetric over ``[min(w, 0), max(w, 0)]``, bias to int32 at ``S_x * S_w``; the op then runs
        in float on the dequantized values. On the DB det head's first ConvTranspose that is a ~1 %
        weight error the QDQ file does not show; mirroring it is what makes ``--requant float32``
        agree with onnxruntime's fused run.
        """
        for node in self.nodes:
            if node.op_type not in ("Conv", "ConvTranspose") or len(node.input) < 2:
                continue
            prod = self.view.producer.get(node.input[0])
            weight = self.consts.get(node.input[1])
            consumers = self.view.consumers.get(node.output[0], [])
            if (
                prod is None
                or prod.op_type != "DequantizeLinear"
                or weight is None
                or weight.dtype != np.float32
                or not consumers
                or any(c.op_type != "QuantizeLinear" for c in consumers)
            ):
                continue
            lo, hi = min(float(weight.min()), 0.0), max(float(weight.max()), 0.0)
            w_scale = np.float32((hi - lo) / 255.0) if hi > lo else np.float32(1.0)
            zp = np.clip(np.rint(np.float32(-128.0) - np.float32(lo) / w_scale), -128, 127).astype(np.int8)
            w_params = QParams(np.array(w_scale), np.array(zp), np.dtype(np.int8))
            self.consts[node.input[1]] = QTensor(quantize_linear(weight, w_params), w_params).dequantize()
            x_params = self._q_params(prod)
            if len(node.input) > 2 and node.input[2] in self.consts and x_params is not None:
                b_scale = np.float32(x_params.scale.reshape(-1)[0]) * w_scale
                bias = self.consts[node.input[2]]
                self.consts[node.input[2]] = (np.rint(bias / b_scale) * b_scale).astype(np.float32)
            self.runtime_quantized.add(node.name)

    # ------------------------------------------------------------------ planning
    def _plan_node(self, node: onnx.NodeProto) -> tuple[str, str]:
        """("integer" | "float" | "q" | "dq" | "const", reason)."""
        op = node.op_type
        if op == "Constant":
            return "const", ""
        if op == "QuantizeLinear":
            return "q", ""
        if op == "DequantizeLinear":
            return "dq", ""
        spec = KERNELS.get(op)
        if spec is None:
            return "float", "no integer kernel for this op"
        for slot in spec.required_slots(node):
            prod = self.view.producer.get(node.input[slot])
            if prod is None or prod.op_type != "DequantizeLinear":
                return "float", f"input {slot} is not quantized (no DequantizeLinear before it)"
        outs = [o for o in node.output if o]
        if len(outs) != 1:
            return "float", "several outputs"
        consumers = self.view.consumers.get(outs[0], [])
        if (
            not consumers
            or any(c.op_type != "QuantizeLinear" for c in consumers)
            or outs[0] in self.view.output_names
        ):
            return "float", "output is not quantized (no QuantizeLinear after it)"
        params = [self._q_params(c) for c in consumers]
        if any(p is None or not p.same_as(params[0]) for p in params):
            return "float", "output quantized with several or dynamic parameter sets"
        return "integer", ""

    def _q_params(self, node: onnx.NodeProto) -> QParams | None:
        """Parameters of a Q or DQ node (None when they are not constants)."""
        key = f"params:{id(node)}"
        if key in self.cache:
            return self.cache[key]
        params = None
        ins = list(node.input) + [""] * 3
        if ins[1] in self.consts and (not ins[2] or ins[2] in self.consts):
            scale = np.asarray(self.consts[ins[1]], dtype=np.float32)
            if ins[2]:
                zp = np.asarray(self.consts[ins[2]])
            elif node.op_type == "DequantizeLinear" and ins[0] in self.consts:
                zp = np.zeros(scale.shape, dtype=self.consts[ins[0]].dtype)
            else:
                zp = np.zeros(scale.shape, dtype=np.uint8)
            axis = None
            if scale.size > 1:
                axis = 1
                for a in node.attribute:
                    if a.name == "axis":
                        axis = a.i
            params = QParams(scale, zp, zp.dtype, axis)
        self.cache[key] = params
        return params

    def _last_use(self) -> dict[str, int]:
        """Index of the last node that reads each tensor (reads through lazy DQs count at the reader)."""
        last: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            if node.op_type == "DequantizeLinear":
                continue
            for name in node.input:
                if not name:
                    continue
                last[name] = i
                prod = self.view.producer.get(name)
                if prod is not None and prod.op_type == "DequantizeLinear":
                    for dep in prod.input:
                        if dep:
                            last[dep] = i
        return last

    def input_quantizer(self, name: str | None = None) -> tuple[str, QParams]:
        """The QuantizeLinear that turns a float graph input into integers: (its output, parameters).

        Feeding that output directly (``run({input: anything, q_output: int8 array})``) runs the model
        from an already-quantized input, as an accelerator receives it.
        """
        name = name or self.view.input_names[0]
        for node in self.view.consumers.get(name, []):
            if node.op_type == "QuantizeLinear":
                params = self._q_params(node)
                if params is not None:
                    return node.output[0], params
        raise OcrQuantError(
            f"model input '{name}' is not quantized by a QuantizeLinear with constant parameters"
        )

    # ------------------------------------------------------------------ running
    def run(
        self,
        feeds: dict[str, np.ndarray],
        keep_all: bool = False,
        reference: dict[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """Simulate one call; returns every graph output as float32 (integer outputs in ``int_outputs``).

        ``keep_all`` keeps every intermediate tensor in ``self.state`` (for debugging and dumps).
        ``reference`` (QuantizeLinear outputs of another run, e.g. onnxruntime's) turns on teacher
        forcing: each integer node's result is compared with the reference (``NodeReport.exact``)
        and then replaced by it, so every kernel is judged on the same inputs and a one-step
        difference cannot snowball through a fragile network.
        """
        self.reference = reference or {}
        missing = [n for n in self.view.input_names if n not in feeds]
        if missing:
            raise OcrQuantError(f"missing model input(s): {', '.join(missing)}")
        state: dict[str, np.ndarray] = dict(feeds)
        keep = set(self.view.output_names)
        self.report = SimReport()
        for i, node in enumerate(self.nodes):
            kind, reason = self.plan[i]
            if kind in ("const", "dq"):
                continue
            if kind == "q":
                if node.output[0] in self.reference:
                    state[node.output[0]] = self.reference[node.output[0]]
                elif node.output[0] not in state:
                    params = self._q_params(node)
                    if params is None:
                        state[node.output[0]] = self.executor.run(
                            node, [self._value(n, state) for n in node.input]
                        )[0]
                    else:
                        state[node.output[0]] = quantize_linear(self._value(node.input[0], state), params)
            elif kind == "integer":
                self._run_integer(node, state)
            else:
                self._run_float(node, state, reason)
            for name in node.input:
                if (
                    not keep_all
                    and self.last_use.get(name) == i
                    and name not in keep
                    and name not in self.consts
                ):
                    state.pop(name, None)
                    prod = self.view.producer.get(name)
                    if prod is not None and prod.op_type == "DequantizeLinear":
                        for dep in prod.input:
                            if self.last_use.get(dep) == i and dep not in keep and dep not in self.consts:
                                state.pop(dep, None)
        self.state = state if keep_all else {}
        outputs = {}
        self.int_outputs = {}
        for name in self.view.output_names:
            outputs[name] = np.asarray(self._value(name, state))
            prod = self.view.producer.get(name)
            if prod is not None and prod.op_type == "DequantizeLinear":
                params = self._q_params(prod)
                if params is not None:
                    self.int_outputs[name] = QTensor(self._value(prod.input[0], state), params)
        return outputs

    def _value(self, name: str, state: dict[str, np.ndarray]) -> np.ndarray:
        if name in state:
            return state[name]
        if name in self.consts:
            return self.consts[name]
        prod = self.view.producer.get(name)
        if prod is not None and prod.op_type == "DequantizeLinear":
            params = self._q_params(prod)
            if params is None:
                value = self.executor.run(prod, [self._value(n, state) for n in prod.input])[0]
            else:
                value = QTensor(self._value(prod.input[0], state), params).dequantize()
            if prod.input[0] not in self.consts:
                state[name] = value
            return value
        raise OcrQuantError(
            f"simulator: tensor '{name}' is used before it is computed (graph not topologically sorted?)"
        )

    def _input(self, name: str, state: dict[str, np.ndarray]) -> Any:
        if not name:
            return None
        prod = self.view.producer.get(name)
        if prod is not None and prod.op_type == "DequantizeLinear":
            params = self._q_params(prod)
            if params is not None:
                return QTensor(np.asarray(self._value(prod.input[0], state)), params)
        return self._value(name, state)

    def _run_integer(self, node: onnx.NodeProto, state: dict[str, np.ndarray]) -> None:
        spec = KERNELS[node.op_type]
        q_nodes = self.view.consumers[node.output[0]]
        out = self._q_params(q_nodes[0])
        ctx = KernelContext(node, self.rounding, self.executor.run, self.cache, requant=self.requant)
        ins = [self._input(n, state) for n in node.input]
        try:
            for slot in spec.required_slots(node):
                if not isinstance(ins[slot], QTensor):
                    raise Fallback(f"input {slot} has dynamic quantization parameters")
            if any(
                isinstance(v, np.ndarray) and v.dtype.kind == "f" and n not in self.consts
                for v, n in zip(ins, node.input, strict=True)
            ):
                raise Fallback("an unquantized float input")
            y = spec.fn(ctx, ins, out)
        except Fallback as why:
            self._run_float(node, state, str(why))
            return
        report = NodeReport(node.name, node.op_type, "integer", ", ".join(ctx.notes), ctx.overflows)
        ref = self.reference.get(q_nodes[0].output[0])
        if ref is not None:
            diff = np.abs(y.astype(np.int64) - ref.astype(np.int64))
            report.exact, report.total = int(np.count_nonzero(diff == 0)), int(diff.size)
            report.max_diff = int(diff.max(initial=0))
            y = ref
        for q in q_nodes:
            state[q.output[0]] = y
        self.report.nodes.append(report)

    def _run_float(self, node: onnx.NodeProto, state: dict[str, np.ndarray], reason: str) -> None:
        values = [self._value(n, state) if n else None for n in node.input]
        outs = self.executor.run(node, values)
        for name, value in zip([o for o in node.output if o], outs, strict=True):
            state[name] = value
        if node.name in self.runtime_quantized:
            reason += "; weights int8 per tensor as onnxruntime quantizes them at load"
        self.report.nodes.append(NodeReport(node.name, node.op_type, "float", reason))
