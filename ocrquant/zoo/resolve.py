"""Turn a ``--model`` argument (zoo name or file path) into an ONNX file and its metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnx

from ocrquant.errors import OcrQuantError
from ocrquant.zoo.fetch import fetch, get_entry
from ocrquant.zoo.registry import ZOO


@dataclass
class ResolvedModel:
    path: Path
    name: str
    task: str | None = None
    framework: str = "onnx"
    metadata: dict[str, str] = field(default_factory=dict)
    extra_files: dict[str, Path] = field(default_factory=dict)


def read_metadata(path: Path) -> dict[str, str]:
    """ONNX metadata_props as a dict (PP-OCR rec keeps its dictionary under ``character``)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        raise OcrQuantError("not a readable ONNX model", path) from None
    return {p.key: p.value for p in model.metadata_props}


def resolve_model(spec: str | Path) -> ResolvedModel:
    """A zoo name is fetched (and converted, for framework models); a path must be an ONNX file."""
    spec_str = str(spec)
    if spec_str in ZOO:
        entry = get_entry(spec_str)
        path = fetch(spec_str)
        extras = {k: path.parent / str(v) for k, v in entry.options.items() if isinstance(v, str)}
        if entry.framework != "onnx":
            from ocrquant.frontends import convert_zoo_entry

            path = convert_zoo_entry(entry, path)
        return ResolvedModel(path, entry.name, entry.task, entry.framework, read_metadata(path), extras)
    path = Path(spec_str)
    if not path.exists():
        raise OcrQuantError(f"no such model file, and not a zoo name (zoo: {', '.join(sorted(ZOO))})", path)
    if path.suffix.lower() != ".onnx":
        raise OcrQuantError("expected an .onnx file (convert other formats with `ocrquant convert`)", path)
    return ResolvedModel(path, path.stem, None, "onnx", read_metadata(path))
