"""``models info``: what a model is, read from the ONNX file itself."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ocrquant.errors import OcrQuantError
from ocrquant.onnx_shapes import declared_dims


def model_info(path: Path) -> dict[str, Any]:
    try:
        model = onnx.load(str(path))
    except Exception:
        raise OcrQuantError("not a readable ONNX model", path) from None
    inits = {i.name for i in model.graph.initializer}
    # paddle2onnx exports weights as Constant nodes rather than initializers: count both
    const_nodes = [n for n in model.graph.node if n.op_type == "Constant"]
    consts = [a.t for n in const_nodes for a in n.attribute if a.name == "value"]
    params = int(sum(np.prod(t.dims) for t in [*model.graph.initializer, *consts]))
    ops = Counter(n.op_type for n in model.graph.node)
    return {
        "path": str(path),
        "size_mb": round(path.stat().st_size / 2**20, 3),
        "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": [
            {"name": i.name, "shape": declared_dims(i)} for i in model.graph.input if i.name not in inits
        ],
        "outputs": [{"name": o.name, "shape": declared_dims(o)} for o in model.graph.output],
        "parameters": params,
        "nodes": len(model.graph.node),
        "op_histogram": dict(ops.most_common()),
        "metadata_keys": [p.key for p in model.metadata_props],
    }
