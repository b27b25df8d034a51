"""Interleaved latency measurement: the only fair way to compare two models on a busy machine.

Each round runs every model once on the same input, in turn, so machine noise (other processes,
frequency changes) hits all of them alike; the ratio of medians is then meaningful. Sessions are
created with spinning off for the same reason (see RuntimeOptions).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ocrquant.runtime.base import RuntimeOptions, create_runner


@dataclass
class Latency:
    median_ms: float
    p90_ms: float
    min_ms: float
    runs: int

    @classmethod
    def from_samples(cls, samples_s: list[float]) -> Latency:
        ms = np.array(samples_s) * 1000.0
        return cls(round(float(np.median(ms)), 3), round(float(np.percentile(ms, 90)), 3),
                   round(float(ms.min()), 3), len(ms))


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
    names = list(runners)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        for x in inputs:
            order = names if (r % 2 == 0) else names[::-1]  # alternate who goes first
            for name in order:
                runner = runners[name]
                feed = {runner.input_names[0]: x}
                t0 = time.perf_counter()
                runner.run(feed)
                if r >= warmup:
                    samples[name].append(time.perf_counter() - t0)
    return {n: Latency.from_samples(s) for n, s in samples.items()}
