"""QDQ graph edits shared by the quantizer's passes and the runtimes that load QDQ models.

Why a module of its own: onnxruntime's ``quantize_static`` puts a QuantizeLinear -> DequantizeLinear
pair on *constants that reach an op through a shape-dependent Reshape* (PP-OCRv3 rec: the LayerNorm
gamma, ``Reshape(layer_norm.w, Slice(Shape(x)))`` -> Q -> DQ -> Mul). OpenVINO constant-folds the
Reshape, and its low-precision pass ``MultiplyPartialTransformation`` then throws ("index '0' out of
range") on a Multiply whose two inputs are both dequantized, so such a file does not compile in plain
OpenVINO (``openvino.Core().compile_model(path, "CPU")``, OpenVINO 2026.4.1). Folding the pair into
the fake-quantized constant keeps the model's arithmetic and makes the file load there. The quantizer
runs it on the file it writes (``qdq_passes``: ``fold_constant_qdq``), the OpenVINO runner on any
model it is given.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ocrquant.errors import OcrQuantError

# ops that only move data: a per-tensor fake-quantization commutes with them
_MOVE_OPS = {"Reshape", "Unsqueeze", "Squeeze", "Transpose", "Flatten", "Identity", "Expand"}
_QRANGE = {
    onnx.TensorProto.INT8: (-128, 127),
    onnx.TensorProto.UINT8: (0, 255),
    onnx.TensorProto.INT16: (-32768, 32767),
    onnx.TensorProto.UINT16: (0, 65535),
}


def fold_constant_qdq(model: onnx.ModelProto) -> dict[str, dict[str, Any]]:
    """Replace Q->DQ pairs on constant-derived tensors by fake-quantized float constants, in place.

    Returns what was folded, ``{quantized tensor: {"initializer", "scale", "zero_point"}}``. Only
    per-tensor pairs on a chain of data-movement ops over one initializer are folded, where the result
    provably equals what onnxruntime computes: the constant ``(clip(rint(w / s) + zp) - zp) * s``.
    """
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in g.output}
    removed: set[int] = set()
    folded: dict[str, dict[str, Any]] = {}
    for q in list(g.node):
        if q.op_type != "QuantizeLinear" or len(q.input) < 2:
            continue
        scale = inits.get(q.input[1])
        zp = inits.get(q.input[2]) if len(q.input) > 2 else None
        if scale is None or (len(q.input) > 2 and zp is None) or int(np.prod(scale.dims)) != 1:
            continue
        # walk up through data-movement ops, each feeding only this chain, to an initializer
        chain: list[onnx.NodeProto] = []
        t = q.input[0]
        while t not in inits:
            node = producer.get(t)
            if node is None or node.op_type not in _MOVE_OPS or len(consumers.get(t, [])) != 1:
                break
            chain.append(node)
            t = node.input[0]
        if t not in inits:
            continue
        dqs = consumers.get(q.output[0], [])
        if not dqs or any(d.op_type != "DequantizeLinear" for d in dqs) or q.output[0] in graph_outputs:
            continue
        if any(d.input[1:] != q.input[1:] for d in dqs):
            continue
        s = float(numpy_helper.to_array(scale).reshape(()))
        z = int(numpy_helper.to_array(zp).reshape(())) if zp is not None else 0
        qtype = zp.data_type if zp is not None else onnx.TensorProto.UINT8
        lo, hi = _QRANGE.get(qtype, (None, None))
        if lo is None:
            continue
        w = numpy_helper.to_array(inits[t]).astype(np.float32)
        fq = ((np.clip(np.rint(w / s) + z, lo, hi) - z) * s).astype(np.float32)
        new_name = f"{t}__fakequant{len(folded)}"
        g.initializer.append(numpy_helper.from_array(fq, new_name))
        bottom = chain[-1] if chain else None
        if bottom is not None:
            bottom.input[0] = new_name
            src = q.input[0]  # the chain's output now carries fake-quantized values
        else:
            src = new_name
        for d in dqs:
            for c in consumers.get(d.output[0], []):
                for k, name in enumerate(c.input):
                    if name == d.output[0]:
                        c.input[k] = src
            if d.output[0] in graph_outputs:
                raise OcrQuantError("cannot rewrite a model whose output is a constant DequantizeLinear")
            removed.add(id(d))
        removed.add(id(q))
        folded[q.input[0]] = {"initializer": t, "scale": s, "zero_point": z}
    if removed:
        keep = [n for n in g.node if id(n) not in removed]
        del g.node[:]
        g.node.extend(keep)
        drop_unused_initializers(model)
    return folded


def drop_unused_initializers(model: onnx.ModelProto) -> None:
    """Remove initializers no node reads (and that are not graph outputs), in place: a folded pair
    leaves its float source, scale and zero point behind, which onnxruntime warns about at load."""
    g = model.graph
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    for attr_graph in (a.g for n in g.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH):
        used |= {i for n in attr_graph.node for i in n.input}
    keep = [i for i in g.initializer if i.name in used]
    if len(keep) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(keep)
