"""Shapes as an ONNX model declares them (one reader for every stage that needs them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
from onnx import shape_inference

from ocrquant.errors import OcrQuantError


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

    if not model.graph.input or not model.graph.output or not model.graph.node:
        raise OcrQuantError("not an ONNX model (no graph, inputs or outputs in it)", path)
    return model


def check_pinnable(model: onnx.ModelProto, shape: tuple[int, ...], source: str | Path) -> onnx.ValueInfoProto:
    """The one image input that ``shape`` may pin (-1 leaves a dimension as it is), else a one-line
    error: dimensions the model already fixes (PP-OCR rec's height 48, the 3 channels) must agree,
    since a different value gives a model that cannot run."""

    if len(model.graph.input) != 1:
        raise OcrQuantError(
            f"--input-shape needs a model with one input, it has {len(model.graph.input)}", source
        )
    graph_input = model.graph.input[0]
    current = declared_dims(graph_input)
    if len(current) != len(shape):
        raise OcrQuantError(
            f"--input-shape has {len(shape)} dims, the model input has {len(current)}", source
        )
    for axis, (have, want) in enumerate(zip(current, shape, strict=True)):
        if want != -1 and isinstance(have, int) and have > 0 and have != want:
            raise OcrQuantError(
                f"--input-shape {list(shape)}: axis {axis} is fixed to {have} by the model", source
            )
    return graph_input


def pin_input_shape(model: onnx.ModelProto, shape: tuple[int, ...], source: str | Path) -> onnx.ModelProto:
    """A copy of ``model`` whose input declares ``shape`` (-1: that dimension stays dynamic) and whose
    outputs declare the static shapes ONNX shape inference then finds: what a static-shape compiler
    (an NPU's 1x3x512x896) is given. Intermediate ``value_info`` is dropped, as it may still carry
    the old symbolic sizes; runtimes infer it again."""
    pinned = onnx.ModelProto()
    pinned.CopyFrom(model)
    graph_input = check_pinnable(pinned, shape, source)
    for dim, want in zip(graph_input.type.tensor_type.shape.dim, shape, strict=True):
        if want != -1:
            dim.Clear()
            dim.dim_value = int(want)
    del pinned.graph.value_info[:]
    static_output_shapes(pinned)
    return pinned


def static_output_shapes(model: onnx.ModelProto) -> None:
    """Write fully static output shapes where ONNX shape inference (with data propagation) finds them
    (in place): converters leave shapes computed through Shape/Concat/Reshape (the cls head's flatten)
    symbolic, and a static-shape deployment wants them concrete."""

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.value_info[:]
    for out in probe.graph.output:
        out.type.tensor_type.ClearField("shape")
    try:
        inferred = shape_inference.infer_shapes(probe, data_prop=True)
    except Exception:  # inference is a nicety here; the model itself is already valid
        return
    for out, new in zip(model.graph.output, inferred.graph.output, strict=True):
        dims = declared_dims(new)
        if dims and all(isinstance(d, int) and d > 0 for d in dims):
            out.type.tensor_type.shape.CopyFrom(new.type.tensor_type.shape)
