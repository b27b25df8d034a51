"""Python entry points, one per workflow step; the CLI is a thin layer over these."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ocrquant.data import open_dataset
from ocrquant.evaluation import EvalResult, evaluate
from ocrquant.runtime import RuntimeOptions, create_runner
from ocrquant.zoo.resolve import resolve_model
from ocrquant.zoo.task import build_task, fixed_input_options, infer_task, input_shape_options

__all__ = ["build_task", "eval_model", "fixed_input_options", "infer_task", "input_shape_options"]


def eval_model(
    model: str | Path,
    data: str | Path,
    *,
    task: str | None = None,
    data_format: str | None = None,
    batch_size: int = 1,
    limit: int | None = None,
    output: Path | None = None,
    backend: str = "onnxruntime",
    runtime: RuntimeOptions | None = None,
    task_options: dict[str, Any] | None = None,
    progress: bool = True,
    input_shape: tuple[int, int, int, int] | None = None,
) -> EvalResult:
    """Evaluate ``model`` (zoo name or .onnx) on the labelled set in ``data``; ``input_shape`` fixes the
    model input (:func:`input_shape_options`)."""
    resolved = resolve_model(model)
    task_name = infer_task(resolved, task)
    options = {**(task_options or {}), **input_shape_options(task_name, input_shape)}
    task_obj = build_task(task_name, resolved, options)
    dataset = open_dataset(Path(data), task_name, data_format)
    runner = create_runner(resolved.path_for(backend), backend, runtime)
    return evaluate(
        task_obj,
        runner,
        dataset,
        model_name=resolved.name,
        batch_size=batch_size,
        limit=limit,
        output=output,
        progress=progress,
        extra_settings={"backend": backend, "model_path": str(resolved.path_for(backend))},
    )
