"""Interleaved latency measurement: the only fair way to compare two models on a busy machine.

Each round runs every model once on the same input, in turn, so machine noise (other processes,
frequency changes) hits all of them alike; the ratio of medians is then meaningful. Sessions are
created with spinning off for the same reason (see RuntimeOptions).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ocrquant.runtime.base import Runner, RuntimeOptions, create_runner


@dataclass
class Latency:
    """Model-call latency over the measured runs (warm-up excluded)."""

    median_ms: float
    p90_ms: float
    min_ms: float
    runs: int

    @classmethod
    def from_samples(cls, samples_s: list[float]) -> Latency:
        ms = np.array(samples_s) * 1000.0
        return cls(
            round(float(np.median(ms)), 3),
            round(float(np.percentile(ms, 90)), 3),
            round(float(ms.min()), 3),
            len(ms),
        )

    def throughput(self, batch: int) -> float:
        """Images per second at the median latency (one stream, ``batch`` images per call)."""
        return round(1000.0 * batch / self.median_ms, 2) if self.median_ms > 0 else 0.0


def interleaved_runs(
    runners: dict[str, Runner],
    inputs: dict[str, list[np.ndarray]],
    *,
    rounds: int = 3,
    warmup: int = 1,
    progress: Callable[[], None] | None = None,
) -> dict[str, Latency]:
    """Latency per key of already-created runners, every key timed in every round, order alternating.

    ``inputs[key]`` are the arrays fed to ``runners[key]`` (so several input shapes or backends can be
    interleaved in one loop); creating the runners is the caller's job, so backends and options are
    free. ``progress`` is called once per model call.
    """
    names = list(runners)
    samples: dict[str, list[float]] = {n: [] for n in names}
    feeds = {n: [{runners[n].input_names[0]: x} for x in inputs[n]] for n in names}
    longest = max(len(v) for v in feeds.values())
    for r in range(warmup + rounds):
        order = names if (r % 2 == 0) else names[::-1]  # alternate who goes first
        for i in range(longest):
            for name in order:
                if i >= len(feeds[name]):
                    continue
                runner = runners[name]
                t0 = time.perf_counter()
                runner.run(feeds[name][i])
                if r >= warmup:
                    samples[name].append(time.perf_counter() - t0)
                if progress is not None:
                    progress()
    return {n: Latency.from_samples(s) for n, s in samples.items()}


def interleaved_latency(
    models: dict[str, Path],
    inputs: list[np.ndarray],
    *,
    backend: str = "onnxruntime",
    threads: int = 2,
    rounds: int = 3,
    warmup: int = 1,
) -> dict[str, Latency]:
    """Median model-call latency per model over ``rounds`` passes of ``inputs``, models interleaved."""
    options = RuntimeOptions(threads=threads, spinning=False)
    runners = {name: create_runner(path, backend, options) for name, path in models.items()}
    return interleaved_runs(runners, {n: inputs for n in runners}, rounds=rounds, warmup=warmup)
