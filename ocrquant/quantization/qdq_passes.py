"""Graph rewrites a target profile runs on the written QDQ model (``TargetProfile.qdq_passes``).

A pass edits the final model only where the edit is exact: the rewritten model computes the same
integers as the one onnxruntime's quantizer wrote. The pipeline runs them last, after the algorithms
that measure the written model (bias correction) and never on the models the analysis tools edit
(``QuantConfig.graph_passes``). Each pass returns a record ``{tensor: {...}}`` of what it changed, which
goes to the sidecar.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ocrquant.quantization.graph import consumers, initializers, producers, remove_nodes


@dataclass(frozen=True)
class QDQPass:
    name: str
    rewrite: Callable[[onnx.ModelProto], dict[str, dict[str, Any]]]


QDQ_PASSES: dict[str, QDQPass] = {}


def register_qdq_pass(p: QDQPass) -> QDQPass:
    QDQ_PASSES[p.name] = p
    return p


# --------------------------------------------------------------------------- fold_scalar_mul
# PaddleOCR's HardSwish is x * clip(x + 3, 0, 6) / 6, and the prepared graph keeps the "/6" as a Mul by
# the constant 1/6 (decomposed HardSwish runs as integer Add/Mul on ort-cpu, see targets.py). In QDQ
# form that Mul is a whole QLinearMul kernel plus a requantization, yet a Mul by a positive scalar only
# relabels the integer grid: q * s * c = q * (s * c). Calibration gives the Mul's output the range c
# times its input's (min/max, percentile and MSE all scale with the data), so the Q after it has scale
# s_out = s_in * c (1 + d) and the input's zero point; it then maps each code k = q - z to
# round(k (1 + d)) = k, exactly, while |k| (1 + d - 1) < 1/2, i.e. |d| < 1 / (2 (qmax - qmin)) (uint8:
# 0.2 %). Where that holds, the rewrite deletes the Mul and that Q, and the DequantizeLinears after it
# read the input's integers directly with the scale s_out they already have: the same integers, one
# kernel fewer. Measured on PP-OCRv3 (session 15): det 20 and cls 9 of 9 such Muls fold, rec 5 of 7
# (two of its MSE ranges differ by 1.4 % and 21 %: left as they are).
def _positive_scalar(value: np.ndarray | None) -> float | None:
    if value is None or value.size != 1 or value.dtype.kind != "f":
        return None
    c = float(value.reshape(-1)[0])
    return c if np.isfinite(c) and c > 0 else None


def _param(inits: dict[str, onnx.TensorProto], node: onnx.NodeProto, slot: int) -> np.ndarray | None:
    """A Q/DQ node's constant input ``slot`` (1 scale, 2 zero point); None when absent or computed."""
    name = node.input[slot] if len(node.input) > slot else ""
    return numpy_helper.to_array(inits[name]) if name in inits else None


def _dq_constant(dq: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> np.ndarray | None:
    """The float value of a DequantizeLinear of a constant (None if any input is computed)."""
    if any(name and name not in inits for name in dq.input):
        return None
    q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
    zp = _param(inits, dq, 2)
    zero = 0.0 if zp is None else zp.astype(np.float64)
    return ((q - zero) * _param(inits, dq, 1).astype(np.float64)).astype(np.float32)


def _same_grid(a: tuple[np.ndarray | None, ...], b: tuple[np.ndarray | None, ...], c: float) -> bool:
    """Whether requantizing from grid ``a`` stretched by ``c`` to grid ``b`` (scale, zero point) is the
    identity on every code: per-tensor, one zero point, scales within 1 / (2 (qmax - qmin))."""
    (s_a, z_a), (s_b, z_b) = a, b
    if s_a is None or s_b is None or s_a.size != 1 or s_b.size != 1:
        return False
    if z_a is None or z_b is None or z_a.dtype != z_b.dtype or z_a.tolist() != z_b.tolist():
        return False
    info = np.iinfo(z_a.dtype)
    tolerance = 0.5 / (int(info.max) - int(info.min)) * 0.5  # half the bound: float32 products round too
    return abs(float(s_b) / (float(s_a) * c) - 1.0) < tolerance


def rewrite_scalar_mul(qmodel: onnx.ModelProto) -> dict[str, dict[str, Any]]:
    """Remove DQ -> Mul(c) -> Q where requantizing is the identity (:func:`_same_grid`)."""
    inits = initializers(qmodel)
    prod, cons = producers(qmodel), consumers(qmodel)
    outputs = {o.name for o in qmodel.graph.output}
    dead: set[int] = set()
    record: dict[str, dict[str, Any]] = {}
    for node in qmodel.graph.node:
        if node.op_type != "Mul" or len(node.input) != 2 or node.output[0] in outputs:
            continue
        dqs = [prod.get(i) for i in node.input]
        if any(d is None or d.op_type != "DequantizeLinear" for d in dqs):
            continue
        qs = cons.get(node.output[0], [])
        if not qs or any(q.op_type != "QuantizeLinear" or q.output[0] in outputs for q in qs):
            continue
        readers = [r for q in qs for r in cons.get(q.output[0], [])]
        if not readers or any(r.op_type != "DequantizeLinear" or r.output[0] in outputs for r in readers):
            continue
        for data, const in ((0, 1), (1, 0)):
            c = _positive_scalar(_dq_constant(dqs[const], inits))
            dq_x = dqs[data]
            if c is None or dq_x.input[0] in inits:
                continue
            grid = (_param(inits, dq_x, 1), _param(inits, dq_x, 2))
            if not all(_same_grid(grid, (_param(inits, q, 1), _param(inits, q, 2)), c) for q in qs):
                break
            for reader in readers:
                reader.input[0] = dq_x.input[0]  # keeps its own scale (= s_in * c) and zero point
            dead.update(id(n) for n in [node, *qs])
            dead.update(id(dq) for dq in dqs if len(cons.get(dq.output[0], [])) == 1)
            q_x = prod.get(dq_x.input[0])
            source = q_x.input[0] if q_x is not None and q_x.op_type == "QuantizeLinear" else dq_x.input[0]
            scale, zero = _param(inits, readers[0], 1), _param(inits, readers[0], 2)
            record[node.output[0]] = {
                "node": node.name,
                "factor": c,
                "grid_of": source,
                "scale": float(scale),
                "zero_point": 0 if zero is None else int(zero),
            }
            break
    if dead:
        remove_nodes(qmodel, dead)
    return record


register_qdq_pass(QDQPass("fold_scalar_mul", rewrite_scalar_mul))
