"""The accuracy-recovery algorithm contract: one small class per algorithm, run at a named stage.

Stages, in pipeline order:

* ``float`` - float-equivalent rewrites of the prepared model before calibration (cross-layer
  equalisation, scale migration). They change weights, so statistics are collected afterwards.
* ``plan``  - edits to the quantization plan once ranges exist (per-tensor dtype overrides such as
  int16 for a few sensitive tensors, float fallback of nodes, range tweaks).
* ``qdq``   - edits to the written QDQ model (bias correction, rounding refinements).

Algorithms read and write an :class:`AlgorithmContext`; the pipeline never knows which ones exist.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx

from ocrquant.errors import OcrQuantError

STAGES = ("float", "plan", "qdq")


@dataclass
class AlgorithmContext:
    """What an algorithm may read or change. ``model`` is the float model (mutable at stage ``float``)."""

    model: onnx.ModelProto
    profile: Any  # TargetProfile
    batches: Callable[[], Iterable[np.ndarray]]  # fresh iterator of calibration input batches
    work_dir: Path
    stats: Any = None  # CalibrationStats (stage plan/qdq)
    plan: Any = None  # QuantPlan (stage plan/qdq)
    qdq_path: Path | None = None  # written QDQ model (stage qdq); algorithms rewrite it in place
    progress: bool = True
    extras: dict[str, Any] = field(default_factory=dict)
    # Node names a float-stage algorithm wants kept float (merged into the plan's exclude list).
    keep_float: dict[str, str] = field(default_factory=dict)  # node name -> reason
    # n -> a factory of batches over n samples: the calibration pick, then more images of the
    # calibration directory, never the held-out ones (QuantConfig.holdout). For algorithms that learn
    # many parameters (distill); None: only ``batches`` exist.
    learning_batches: Callable[[int], Callable[[], Iterable[np.ndarray]]] | None = None


class Algorithm(ABC):
    name: ClassVar[str]
    stage: ClassVar[str]
    #: optional packages the algorithm imports (an extra of the project); checked before any work
    requires: ClassVar[tuple[str, ...]] = ()
    #: the algorithm fits the model to the float model's output (distill): ``auto`` judges it on the
    #: held-out output loss where the task's own agreement figure is coarse (det)
    learns_output: ClassVar[bool] = False

    @classmethod
    def missing(cls) -> list[str]:
        """The required packages that are not installed."""

        return [m for m in cls.requires if importlib.util.find_spec(m) is None]

    @abstractmethod
    def apply(self, ctx: AlgorithmContext) -> dict[str, Any]:
        """Change ``ctx`` and return a JSON-serialisable report (what was changed, how much)."""


ALGORITHMS: dict[str, type[Algorithm]] = {}


def register_algorithm(name: str, stage: str) -> Callable[[type[Algorithm]], type[Algorithm]]:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage}")

    def deco(cls: type[Algorithm]) -> type[Algorithm]:
        cls.name, cls.stage = name, stage
        ALGORITHMS[name] = cls
        return cls

    return deco


def create_algorithm(name: str, **options: Any) -> Algorithm:

    try:
        cls = ALGORITHMS[name]
    except KeyError:
        raise OcrQuantError(f"unknown algorithm '{name}' (known: {', '.join(sorted(ALGORITHMS))})") from None
    if missing := cls.missing():
        raise OcrQuantError(
            f"algorithm '{name}' needs {', '.join(missing)}: pip install -e '.[{missing[0]}]'"
        )
    try:
        return cls(**options)
    except TypeError as exc:
        raise OcrQuantError(f"bad option for algorithm {name}: {exc}") from None
