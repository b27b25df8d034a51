"""Turn a ``--model`` argument (zoo name or file path) into an ONNX file and its metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from ocrquant.errors import OcrQuantError
from ocrquant.fileio import read_sidecar, sha256_file
from ocrquant.frontends import convert_zoo_entry, converted_path, require_frontend
from ocrquant.onnx_shapes import declared_input_shape, declared_output_shape, require_graph
from ocrquant.runtime import BACKENDS  # importing the package registers the backends
from ocrquant.zoo.fetch import fetch, get_entry, model_dir
from ocrquant.zoo.registry import ZOO, ZooEntry


@dataclass
class ResolvedModel:
    path: Path
    name: str
    task: str | None = None
    framework: str = "onnx"
    metadata: dict[str, str] = field(default_factory=dict)
    extra_files: dict[str, Path] = field(default_factory=dict)
    source_path: Path | None = None  # the framework file a converted zoo model came from (.pdmodel, .pth)
    # the first output's declared dims (ocrquant.onnx_shapes); lets build_task refuse another task's model
    output_shape: list[Any] | None = None
    # task settings the model was published (or quantized) with; build_task starts from these
    preset: dict[str, Any] = field(default_factory=dict)
    # the first input's declared dims: a fixed-shape model (an NPU deployment's 1x3x512x896) brings
    # its own preprocessing size (build_task)
    input_shape: list[Any] | None = None

    def path_for(self, backend: str) -> Path:
        """The file ``backend`` loads: the source file for a framework-native backend (``paddle`` runs
        the ``.pdmodel``), else the ONNX model. A backend says which by its ``model_format``."""

        fmt = getattr(BACKENDS.get(backend), "model_format", "onnx")
        if fmt == "onnx":
            return self.path
        if self.source_path is None or fmt != self.framework:
            msg = f"backend '{backend}' runs {fmt} models; {self.name} is a {self.framework} model"
            raise OcrQuantError(msg, self.path)
        return self.source_path


def read_header(path: Path) -> tuple[dict[str, str], list[Any] | None]:
    """ONNX metadata_props as a dict (PP-OCR rec keeps its dictionary under ``character``), and the
    first output's declared dims, from one parse of the file."""
    metadata, output_shape, _ = read_header_shapes(path)
    return metadata, output_shape


def read_header_shapes(path: Path) -> tuple[dict[str, str], list[Any] | None, list[Any] | None]:
    """:func:`read_header` plus the first input's declared dims."""
    if path.is_dir():
        raise OcrQuantError("is a directory, not an .onnx file", path)
    if path.stat().st_size == 0:
        raise OcrQuantError("empty file, not an ONNX model", path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        raise OcrQuantError("not a readable ONNX model", path) from None
    require_graph(model, path)
    metadata = {p.key: p.value for p in model.metadata_props}
    return metadata, declared_output_shape(model), declared_input_shape(model)


def resolve_model(spec: str | Path) -> ResolvedModel:
    """A zoo name is fetched (and converted, for framework models); a path must be an ONNX file."""
    spec_str = str(spec)
    if spec_str in ZOO:
        entry = get_entry(spec_str)
        if entry.framework != "onnx":
            if not converted_path(model_dir(entry) / entry.model_file).is_file():
                require_frontend(entry.framework, f"zoo model {entry.name} (a {entry.framework} model)")
        path = fetch(spec_str)
        extras = {k: path.parent / str(v) for k, v in entry.options.items() if isinstance(v, str)}
        source = None
        if entry.framework != "onnx":
            source, path = path, convert_zoo_entry(entry, path)
        metadata, output_shape, input_shape = read_header_shapes(path)
        return ResolvedModel(
            path,
            entry.name,
            entry.task,
            entry.framework,
            metadata,
            extras,
            source,
            output_shape,
            dict(entry.preset),
            input_shape,
        )
    path = Path(spec_str)
    if not path.exists():
        raise OcrQuantError(f"no such model file, and not a zoo name (zoo: {', '.join(sorted(ZOO))})", path)
    if path.suffix.lower() != ".onnx":
        raise OcrQuantError("expected an .onnx file (convert other formats with `ocrquant convert`)", path)
    metadata, output_shape, input_shape = read_header_shapes(path)
    task, preset = file_task_and_preset(path)
    return ResolvedModel(
        path,
        path.stem,
        task,
        "onnx",
        metadata,
        output_shape=output_shape,
        preset=preset,
        input_shape=input_shape,
    )


def file_task_and_preset(path: Path) -> tuple[str | None, dict[str, Any]]:
    """What a bare ``.onnx`` file says of its task and settings, so that it runs as it was meant to
    with no flags: an INT8 model ocrquant wrote records both in its ``<stem>.quant.json`` sidecar; a
    file whose bytes are a zoo model's (rapidocr's ``PP-OCRv6_det_small.onnx`` copied out of its wheel)
    gets that entry's. (None, {}) otherwise."""

    try:
        side = read_sidecar(path)
    except (OSError, ValueError, AttributeError):
        side = {}
    task = side.get("task")
    if isinstance(task, str):
        config = (side.get("settings") or {}).get("task_config")
        return task, dict(config) if isinstance(config, dict) else {}
    entry = zoo_entry_of_file(path)
    return (entry.task, dict(entry.preset)) if entry else (None, {})


def zoo_entry_of_file(path: Path) -> ZooEntry | None:
    """The zoo entry whose model file has exactly these bytes (size compared first, so an unrelated
    file is not hashed)."""

    known = [e for e in ZOO.values() if e.model_sha256]
    try:
        size = path.stat().st_size
    except OSError:
        return None
    if not any(e.model_size == size for e in known):
        return None
    digest = sha256_file(path)
    return next((e for e in known if e.model_sha256 == digest), None)
