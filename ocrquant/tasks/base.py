"""The task contract: preprocess -> (runtime) -> postprocess -> metric, one class per OCR task.

Tasks are registered by name so evaluation, calibration, quantization and reports never branch on
the task: they ask the registry. A task owns the exact input semantics of the model family it
serves (PaddleOCR's for det/cls/rec), because a metric is only comparable when those match.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from ocrquant.errors import OcrQuantError
from ocrquant.metrics.base import Metric


@dataclass
class Batch:
    """Model input for a group of images plus what postprocess needs to map outputs back."""

    inputs: np.ndarray  # NCHW float32
    metas: list[dict[str, Any]]


class Task(ABC):
    """A model family's input/output semantics. Subclasses set ``name`` and a ``Config`` dataclass."""

    name: ClassVar[str]
    Config: ClassVar[type]
    #: the first output's shape as this family's models declare it (None: any size), and how to say it
    output_layout: ClassVar[tuple[int | None, ...] | None] = None
    output_layout_text: ClassVar[str] = ""

    def __init__(self, config: Any | None = None, model_metadata: dict[str, str] | None = None) -> None:
        self.config = config if config is not None else self.Config()
        self.model_metadata = model_metadata or {}

    @abstractmethod
    def preprocess(self, images: list[np.ndarray]) -> Batch:
        """Turn BGR uint8 images into one model input batch (the whole batch, since rec and cls pad
        every image of a batch to a width that depends on the others)."""

    @abstractmethod
    def postprocess(self, outputs: list[np.ndarray], batch: Batch) -> list[dict[str, Any]]:
        """Turn raw model outputs into JSON-serialisable predictions, one per image."""

    @abstractmethod
    def new_metric(self) -> Metric:
        """A fresh metric accumulator for this task."""

    def sort_key(self, image: np.ndarray) -> float:
        """Order in which images are batched (rec/cls sort by aspect ratio, as PaddleOCR does)."""
        return 0.0

    def batchable(self) -> bool:
        """Whether images of different sizes may share a batch."""
        return True

    def check_model(self, runner: Any, source: object) -> None:
        """Refuse a loaded model this task cannot drive (one NCHW image input; :meth:`check_output_shape`),
        from what ``runner`` says the model declares."""
        inputs = runner.input_shapes()
        if inputs is not None and (len(inputs) != 1 or len(inputs[0]) != 4):
            shapes = ", ".join(f"{n}{list(i)}" for n, i in zip(runner.input_names, inputs, strict=True))
            raise OcrQuantError(
                f"expected one image input of rank 4 (N, C, H, W), model has: {shapes}", source
            )
        outputs = runner.output_shapes()
        self.check_output_shape(outputs[0] if outputs else None, source)

    def check_output_shape(self, shape: Sequence[int | str | None] | None, source: object) -> None:
        """Refuse a model whose declared first output cannot be this task's, before anything runs it.

        Why: a model of another task (a rec file passed with ``--task det``) otherwise fails deep inside
        the runtime, with a broadcast or concat error naming one of its nodes, or worse runs and gives a
        meaningless metric. Only what the model declares is compared: the rank, and each size both sides
        fix. ``shape`` None (nothing declared) passes."""
        if self.output_layout is None or shape is None:
            return
        if not layout_fits(self.output_layout, shape):
            text = "x".join(str(d) if isinstance(d, int) and d > 0 else "?" for d in shape) or "a scalar"
            raise OcrQuantError(
                f"model output has shape {text}, a {self.name} model's is {self.output_layout_text}: "
                f"is this a {self.name} model?",
                source,
            )


def layout_fits(
    layout: Sequence[int | None], shape: Sequence[int | str | None], *, fixed_declared: bool = False
) -> bool:
    """Whether a declared ``shape`` (ints, names or None) can be ``layout`` (None: any size): same rank,
    and no size both fix differently. ``fixed_declared``: each size the layout fixes must also be
    declared, as positive evidence (guessing a model's task) rather than the absence of a conflict."""
    declared = [d if isinstance(d, int) and d > 0 else None for d in shape]
    return len(declared) == len(layout) and all(
        want is None or (got == want if fixed_declared else got in (None, want))
        for got, want in zip(declared, layout, strict=True)
    )


TASKS: dict[str, type[Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    def deco(cls: type[Task]) -> type[Task]:
        cls.name = name
        TASKS[name] = cls
        return cls

    return deco


def get_task_class(name: str) -> type[Task]:

    try:
        return TASKS[name]
    except KeyError:
        raise OcrQuantError(f"unknown task '{name}' (known: {', '.join(sorted(TASKS))})") from None


def make_config(config_cls: type, overrides: dict[str, Any]) -> Any:
    """Build a task config from CLI-style overrides, ignoring None (= keep the default)."""
    names = {f.name for f in fields(config_cls)}
    unknown = set(overrides) - names
    if unknown:
        raise OcrQuantError(f"unknown option(s) for {config_cls.__qualname__}: {', '.join(sorted(unknown))}")
    return config_cls(**{k: v for k, v in overrides.items() if v is not None})
