"""Shapes as an ONNX model declares them (one reader for every stage that needs them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx


def declared_dims(value_info: onnx.ValueInfoProto, unknown: Any = "?") -> list[Any]:
    """Each dimension of ``value_info``: its fixed size, else its symbolic name, else ``unknown``."""
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or unknown)
        for d in value_info.type.tensor_type.shape.dim
    ]


def declared_output_shape(model: onnx.ModelProto) -> list[Any] | None:
    """The first graph output's declared dimensions; None where the model declares no shape for it."""
    if not model.graph.output:
        return None
    out = model.graph.output[0]
    return declared_dims(out) if out.type.tensor_type.HasField("shape") else None


def declared_input_shape(model: onnx.ModelProto) -> list[Any] | None:
    """The first graph input's declared dimensions (an int where fixed, else a name or "?")."""
    if not model.graph.input:
        return None
    first = model.graph.input[0]
    return declared_dims(first) if first.type.tensor_type.HasField("shape") else None


def require_graph(model: onnx.ModelProto, path: str | Path) -> onnx.ModelProto:
    """``model`` if it has a graph with inputs, outputs and nodes, else a one-line error naming
    ``path``: protobuf parses an empty file, and many text or random files, into a "model" without
    complaint, which would then fail deep inside a command."""
    from ocrquant.errors import OcrQuantError

    if not model.graph.input or not model.graph.output or not model.graph.node:
        raise OcrQuantError("not an ONNX model (no graph, inputs or outputs in it)", path)
    return model
