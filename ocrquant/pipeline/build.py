"""Build an :class:`OcrPipeline` from model specs (zoo names or .onnx paths) and a precision.

INT8 models: a path given for a stage is used as it is (the user's own quantized model). With
``precision="int8"`` a *zoo name* means "the INT8 model ``ocrquant quantize`` made from it", looked up
at :func:`int8_model_path` (``$OCRQUANT_HOME/int8/<name>.onnx``); when it is not there the user is
told to run ``ocrquant quantize`` first, rather than silently getting an FP32 model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ocrquant.errors import OcrQuantError
from ocrquant.fileio import read_sidecar, sidecar_path
from ocrquant.pipeline.core import STAGES, OcrPipeline, PipelineConfig, StageModel
from ocrquant.runtime import RuntimeOptions, create_runner
from ocrquant.zoo.fetch import cache_home
from ocrquant.zoo.registry import DEFAULT_CHAIN, ZOO
from ocrquant.zoo.resolve import ResolvedModel, read_header, resolve_model
from ocrquant.zoo.task import build_task

PRECISIONS = ("fp32", "int8")
DEFAULT_MODELS = DEFAULT_CHAIN
#: values of a ``--cls`` option that mean "no direction classifier"
NO_MODEL = frozenset({"", "none", "off"})


def int8_model_path(name: str) -> Path:
    """Where the INT8 model quantized from zoo model ``name`` is cached."""
    return cache_home() / "int8" / f"{name}.onnx"


def resolve_stage_model(spec: str | Path, stage: str, precision: str = "fp32") -> ResolvedModel:
    """The model file for one stage; for ``int8`` and a zoo name, the cached INT8 model (which keeps the
    FP32 model's metadata, e.g. the recogniser's dictionary, when the quantizer dropped it)."""
    if precision not in PRECISIONS:
        raise OcrQuantError(f"unknown precision '{precision}' (known: {', '.join(PRECISIONS)})")
    spec_str = str(spec)
    if precision == "fp32" or spec_str not in ZOO:
        resolved = resolve_model(spec_str)
        if resolved.task and resolved.task != stage:
            raise OcrQuantError(f"zoo model {resolved.name} is a {resolved.task} model, not a {stage} model")
        return resolved
    entry = ZOO[spec_str]
    if entry.task != stage:
        raise OcrQuantError(f"zoo model {spec_str} is a {entry.task} model, not a {stage} model")
    path = int8_model_path(spec_str)
    if not path.is_file():
        raise OcrQuantError(
            f"no INT8 model for {spec_str}; run `ocrquant run --task {stage} --model {spec_str}` first "
            f"(or pass an INT8 .onnx path to --{stage})",
            path,
        )
    side = sidecar_path(path)
    if side.is_file() and not read_sidecar(path):  # recorded digest differs: damaged since cached
        raise OcrQuantError(f"cached INT8 model is damaged; run `ocrquant run --task {stage}` again", path)
    metadata, output_shape = read_header(path)
    if stage == "rec" and "character" not in metadata:
        metadata = {**resolve_model(spec_str).metadata, **metadata}
    return ResolvedModel(path, f"{spec_str}-int8", stage, "onnx", metadata, output_shape=output_shape)


def load_stage(
    spec: str | Path,
    stage: str,
    *,
    precision: str = "fp32",
    backend: str = "onnxruntime",
    runtime: RuntimeOptions | None = None,
    task_options: dict[str, Any] | None = None,
) -> StageModel:
    """Resolve, load and wrap one stage's model with its task."""

    if stage not in STAGES:
        raise OcrQuantError(f"unknown pipeline stage '{stage}' (known: {', '.join(STAGES)})")
    resolved = resolve_stage_model(spec, stage, precision)
    task = build_task(stage, resolved, task_options)
    # A framework-native backend (e.g. paddle) loads the model's source file rather than the ONNX one.
    path = resolved.path_for(backend) if hasattr(resolved, "path_for") else resolved.path
    runner = create_runner(path, backend, runtime)
    task.check_model(runner, path)
    label = precision if str(spec) in ZOO else "as given"
    return StageModel(stage, resolved.name, path, label, task, runner)


@dataclass
class PipelineSpec:
    """Which models a pipeline uses; ``cls=None`` runs without direction classification."""

    det: str = DEFAULT_MODELS["det"]
    cls: str | None = DEFAULT_MODELS["cls"]
    rec: str = DEFAULT_MODELS["rec"]

    def __post_init__(self) -> None:
        if self.cls is not None and str(self.cls).strip().lower() in NO_MODEL:
            self.cls = None


def build_pipeline(
    det: str | Path = DEFAULT_MODELS["det"],
    cls: str | Path | None = DEFAULT_MODELS["cls"],
    rec: str | Path = DEFAULT_MODELS["rec"],
    *,
    precision: str = "fp32",
    config: PipelineConfig | None = None,
    backend: str = "onnxruntime",
    runtime: RuntimeOptions | None = None,
    det_options: dict[str, Any] | None = None,
    cls_options: dict[str, Any] | None = None,
    rec_options: dict[str, Any] | None = None,
) -> OcrPipeline:
    """A ready :class:`OcrPipeline` from model specs (zoo names or .onnx paths); ``cls=None`` (or
    ``"none"``) leaves out direction classification."""
    spec = PipelineSpec(str(det), None if cls is None else str(cls), str(rec))
    common = {"precision": precision, "backend": backend, "runtime": runtime}
    det_stage = load_stage(spec.det, "det", task_options=det_options, **common)
    cls_stage = load_stage(spec.cls, "cls", task_options=cls_options, **common) if spec.cls else None
    rec_stage = load_stage(spec.rec, "rec", task_options=rec_options, **common)
    return OcrPipeline.from_stages(det_stage, cls_stage, rec_stage, config)
