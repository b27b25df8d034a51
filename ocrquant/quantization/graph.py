"""Small ONNX graph helpers shared by the quantization passes (loading, topology, node counting)."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ocrquant.errors import OcrQuantError

# Ops that only exist in an already-quantized graph (QDQ or QOperator format).
QUANT_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "ConvInteger",
        "MatMulInteger",
        "QGemm",
        "QAttention",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
    }
)
# Ops whose second input is a weight with an output-channel axis (op type -> axis function).
WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def load_model(path: str | Path) -> onnx.ModelProto:
    """Load an ONNX model or raise a one-line OcrQuantError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise OcrQuantError("no such model file", path)
    try:
        return onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError / ValueError variants
        raise OcrQuantError(f"not a readable ONNX model ({type(exc).__name__})", path) from None


def is_quantized(model: onnx.ModelProto | str | Path) -> bool:
    """True when the graph already holds quantization ops (QDQ pairs or QLinear*/Integer kernels).

    Quantizing twice would stack rounding on rounding and calibrate on already-clipped ranges, so the
    pipeline refuses such input instead of producing a silently worse model.
    """
    if not isinstance(model, onnx.ModelProto):
        model = load_model(model)
    return any(n.op_type in QUANT_OPS or n.op_type.startswith("QLinear") for n in model.graph.node)


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def nearest_floor_asymmetric(node: onnx.NodeProto) -> bool:
    """A Resize whose output element ``i`` copies input element ``i // k`` per axis (nearest, floor,
    asymmetric): exact to rewrite as repeats, since it interpolates nothing."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return (
        attrs.get("mode", b"nearest") == b"nearest"
        and attrs.get("nearest_mode", b"round_prefer_floor") == b"floor"
        and attrs.get("coordinate_transformation_mode", b"half_pixel") == b"asymmetric"
    )


def nearest_upsample_factor(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> float | None:
    """k when ``node`` is a nearest (floor, asymmetric) Resize by a constant ``[1, 1, k, k]`` with no
    ``sizes`` input, else None: each output element copies input element ``i // k``."""
    if node.op_type != "Resize" or len(node.input) < 3 or not nearest_floor_asymmetric(node):
        return None
    if len(node.input) > 3 and node.input[3] or node.input[2] not in inits:
        return None
    scales = numpy_helper.to_array(inits[node.input[2]])
    if scales.shape != (4,) or scales[0] != 1 or scales[1] != 1 or scales[2] != scales[3]:
        return None
    return float(scales[2])


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {i.name: i for i in model.graph.initializer}


def consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            if name:
                out[name].append(node)
    return out


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output if o}


def remove_nodes(model: onnx.ModelProto, dead: set[int]) -> None:
    """Delete the nodes whose ``id()`` is in ``dead``, then the initializers no remaining node reads."""
    keep = [n for n in model.graph.node if id(n) not in dead]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    used = {i for n in keep for i in n.input}
    live = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(live)


def get_attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def hardsigmoid_params(node: onnx.NodeProto) -> tuple[float, float]:
    """A HardSigmoid's ``alpha`` and ``beta``, with ONNX's defaults (0.2, 0.5) where unset."""
    return float(get_attr(node, "alpha", 0.2)), float(get_attr(node, "beta", 0.5))


def const_value(model: onnx.ModelProto, name: str, inits: dict | None = None) -> np.ndarray | None:
    """The value of an initializer (or None when ``name`` is computed at run time)."""
    inits = inits if inits is not None else initializers(model)
    return numpy_helper.to_array(inits[name]) if name in inits else None


def float_tensors(model: onnx.ModelProto) -> list[str]:
    """Names of float32 activations (graph inputs and node outputs, not initializers), in graph order.

    Types come from ONNX shape inference; a tensor whose type cannot be inferred is left out (it is
    shape arithmetic in these models, never something a quantizer would touch).
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    inits = set(initializers(model))
    names = [i.name for i in model.graph.input if i.name not in inits]
    names += [o for n in model.graph.node for o in n.output if o]
    return [n for n in dict.fromkeys(names) if types.get(n) == onnx.TensorProto.FLOAT]


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def weight_axis(node: onnx.NodeProto) -> int:
    """Output-channel axis of a weighted op's weight (the axis per-channel scales run along)."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if get_attr(node, "transB", 0) else 1
    return 1  # MatMul: (K, N) weight, one scale per output column


def clean_opset_imports(model: onnx.ModelProto) -> None:
    """Drop opset imports no node uses (ORT's offline optimiser adds a dozen private domains)."""
    used = {n.domain or "" for n in model.graph.node}
    keep = [imp for imp in model.opset_import if (imp.domain or "") in used or imp.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def single_reader(model: onnx.ModelProto, cons: dict[str, list[onnx.NodeProto]]):
    """``reader(name)``: the one node reading tensor ``name``, or None when it has several readers or
    is a graph output (a pattern rewrite may only absorb such a tensor)."""
    outputs = {o.name for o in model.graph.output}

    def reader(name: str) -> onnx.NodeProto | None:
        found = cons.get(name, [])
        return found[0] if len(found) == 1 and name not in outputs else None

    return reader


def other_input(node: onnx.NodeProto, name: str) -> str | None:
    """The input of a two-input ``node`` that is not ``name`` (None if there is no single other)."""
    rest = [i for i in node.input if i != name]
    return rest[0] if len(rest) == 1 else None


def attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """A node's attributes as Python values (name -> value)."""
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
