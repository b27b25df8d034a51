"""A resolved model bound to its task: which task it is, and the task object with the model's preset,
fixed input size and metadata applied. Every command builds its task here, once, at the CLI/API."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from ocrquant.errors import OcrQuantError
from ocrquant.tasks import Task, get_task_class, make_config
from ocrquant.zoo.registry import ZOO
from ocrquant.zoo.resolve import ResolvedModel


def build_task(task_name: str, model: ResolvedModel, options: dict[str, Any] | None = None) -> Task:
    """The task object for ``model``: config from ``options``, model metadata (rec dictionary) attached.
    A model whose declared output cannot be this task's is refused here, before any command runs it."""
    cls = get_task_class(task_name)
    # the model's own preset first (only the keys this task knows: an INT8 sidecar of another version
    # may record more), then the caller's options, which win key by key
    known = {f.name for f in fields(cls.Config)}
    opts = {k: v for k, v in model.preset.items() if k in known}
    opts.update({k: v for k, v in fixed_input_options(task_name, model.input_shape).items() if k in known})
    opts.update({k: v for k, v in (options or {}).items() if v is not None})
    if task_name == "rec" and not opts.get("char_dict") and "char_dict" in model.extra_files:
        opts["char_dict"] = str(model.extra_files["char_dict"])
    task = cls(make_config(cls.Config, opts), model.metadata)
    task.check_output_shape(model.output_shape, model.path)
    return task


def fixed_input_options(task_name: str, dims: list[Any] | None) -> dict[str, Any]:
    """The preprocessing a model with a fixed input size needs (an NPU deployment's 1x3x512x896 det,
    1x3x48x320 rec): every image resized to it, as the deployment does; a dynamic input: nothing."""
    if not dims or len(dims) != 4:
        return {}
    _, c, h, w = dims
    if not all(isinstance(d, int) and d > 0 for d in (c, h, w)):
        return {}
    options = _size_options(task_name, c, h, w)
    return options if "input_shape" in options else {**options, "fixed_width": True}


def _size_options(task_name: str, c: int, h: int, w: int) -> dict[str, Any]:
    """A C x H x W model input as task options: det resizes to H x W, cls and rec take C x H x W."""
    return {"input_shape": (h, w)} if task_name.split("-")[0] == "det" else {"image_shape": (c, h, w)}


def input_shape_options(task_name: str, shape: tuple[int, int, int, int] | None) -> dict[str, Any]:
    """``--input-shape N C H W`` as the task's options, the one mapping every command uses: det resizes
    every image to H x W (a fixed-shape model, e.g. an NPU compiler's 512x896; boxes are mapped back to
    the original image), cls and rec take C x H x W as their input (rec: H and the minimum width, as
    PaddleOCR widens long crops). N is the batch, -1 for a dynamic one."""
    if shape is None:
        return {}
    n, c, h, w = (int(v) for v in shape)
    if n == 0 or n < -1 or min(c, h, w) <= 0:
        raise OcrQuantError(f"--input-shape wants N C H W, C H W > 0 and N > 0 or -1, got {list(shape)}")
    return _size_options(task_name, c, h, w)


def infer_task(model: ResolvedModel, task: str | None) -> str:
    if task:
        if model.task and model.task != task and model.name in ZOO:
            raise OcrQuantError(f"zoo model {model.name} is a {model.task} model, not {task}")
        # a file's recorded or recognised task is a default: an explicit --task wins, and the task's
        # check of the declared output refuses a model that cannot be it
        return task
    if model.task:
        return model.task
    raise OcrQuantError(f"cannot tell the task of {model.path}; pass --task det|cls|rec")
