"""Model inputs for analysis: a labelled dataset run through the task's own preprocessing, so every
layer is measured on exactly what the model sees in evaluation (one image per call)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ocrquant.data import open_dataset, readable_images
from ocrquant.errors import OcrQuantError
from ocrquant.zoo.resolve import resolve_model
from ocrquant.zoo.task import build_task, infer_task, input_shape_options


def load_inputs(
    model: str | Path,
    data: str | Path,
    task: str | None = None,
    limit: int | None = None,
    task_options: dict[str, Any] | None = None,
    data_format: str | None = None,
    progress: bool = False,
    input_shape: tuple[int, int, int, int] | None = None,
) -> tuple[list[str], list[np.ndarray]]:
    """(sample keys, NCHW float32 arrays with N=1) for the first ``limit`` samples of ``data``.

    ``input_shape`` (N, C, H, W) fixes the input: det takes (H, W) as a fixed resize, cls and rec
    (C, H, W) as their input size (rec's width stays a minimum: PaddleOCR widens a long crop's input to
    its aspect ratio)."""

    resolved = resolve_model(model)
    task_name = infer_task(resolved, task)
    if input_shape is not None:
        task_options = {**(task_options or {}), **input_shape_options(task_name, input_shape)}
    task_obj = build_task(task_name, resolved, task_options)
    dataset = open_dataset(Path(data), task_name, data_format)
    samples = dataset.samples[:limit] if limit else dataset.samples
    keys, arrays = [], []
    bar = tqdm(samples, desc="preprocess", disable=not progress, unit="img")
    for sample, image in readable_images(bar):
        keys.append(sample.key)
        arrays.append(np.ascontiguousarray(task_obj.preprocess([image]).inputs, dtype=np.float32))
    if not arrays:
        raise OcrQuantError("no readable images among the samples", data)
    return keys, arrays
