"""Runners: one interface over every inference runtime (Polygraphy's lesson).

Comparing float vs INT8 vs another backend is then a loop over runners, not a feature per pair.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ocrquant.errors import OcrQuantError


@dataclass
class RuntimeOptions:
    """Session settings that change speed; explicit so every measurement states them.

    ``spinning`` is off by default: onnxruntime's spinning threads steal the cores of whatever runs
    next, which makes interleaved float-vs-INT8 timings meaningless.
    """

    threads: int = 0  # 0 = the runtime's default (all cores)
    spinning: bool = False
    optimization: str = "all"  # "disable" | "basic" | "extended" | "all"
    profile: bool = False
    profile_prefix: str = "ocrquant_profile"

    def __post_init__(self) -> None:
        check_threads(self.threads)


def check_threads(threads: int) -> None:
    """Refuse a thread count the machine cannot honour: ``--threads 100000`` made onnxruntime create
    tens of thousands of threads until the kernel killed the process (exit 137, no message).
    The cap is the CPU count (at least 2, the default of ``run``); ``OCRQUANT_MAX_THREADS`` raises it
    for oversubscription experiments."""

    cap = int(os.environ.get("OCRQUANT_MAX_THREADS") or max(os.cpu_count() or 1, 2))
    if threads < 0:
        raise OcrQuantError(f"--threads {threads}: a thread count is >= 0 (0 = all cores)")
    if threads > cap:
        raise OcrQuantError(
            f"--threads {threads}: more than this machine's {cap} CPUs (set OCRQUANT_MAX_THREADS to force)"
        )


class Runner(ABC):
    """A loaded model ready to run: named inputs in, list of outputs out."""

    name: ClassVar[str]

    @property
    @abstractmethod
    def input_names(self) -> list[str]: ...

    @property
    @abstractmethod
    def output_names(self) -> list[str]: ...

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...

    def input_shapes(self) -> list[list[int | str | None]] | None:
        """The inputs' shapes as the model declares them (a name or None for a free size); None where
        the backend does not say. Lets a task refuse the wrong model before running it."""
        return None

    def output_shapes(self) -> list[list[int | str | None]] | None:
        """The outputs' declared shapes, as :meth:`input_shapes`."""
        return None

    def end_profiling(self) -> str | None:
        """Stop profiling and return the trace file, where the backend supports it."""
        return None


BACKENDS: dict[str, Callable[[Path, RuntimeOptions], Runner]] = {}


def register_backend(name: str) -> Callable[[type[Runner]], type[Runner]]:
    def deco(cls: type[Runner]) -> type[Runner]:
        cls.name = name
        BACKENDS[name] = cls
        return cls

    return deco


def create_runner(
    model: str | Path, backend: str = "onnxruntime", options: RuntimeOptions | None = None
) -> Runner:

    if backend not in BACKENDS:
        raise OcrQuantError(f"unknown backend '{backend}' (known: {', '.join(sorted(BACKENDS))})")
    return BACKENDS[backend](Path(model), options or RuntimeOptions())
