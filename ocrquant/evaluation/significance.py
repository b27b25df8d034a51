"""Is an INT8 model's metric change real? A paired bootstrap over the test samples.

A delta of -0.4 point on 500 images can be quantization or the luck of which boxes the rounding
happened to move. Resampling the test samples (with replacement) and scoring the float and the INT8
predictions on the *same* resample gives the spread of the delta that the choice of test images
alone produces; its 2.5 / 97.5 % points are the 95 % interval reported beside every delta. Paired,
because both models see the same images: the images' own difficulty cancels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ocrquant.metrics.base import Metric

RESAMPLES = 2000


def _stats(metric: Metric, samples: list[dict[str, Any]]) -> dict[str, list[float]]:
    return {s["key"]: metric.sample_stats(s["figures"]) for s in samples}


def paired_delta_interval(
    metric: Metric,
    float_samples: list[dict[str, Any]],
    int8_samples: list[dict[str, Any]],
    resamples: int = RESAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float] | None:
    """95 % (``level``) bootstrap interval of ``int8 - float`` on ``metric``'s primary figure, samples
    paired by key; None when the metric has no per-sample counts or there are no per-sample figures.
    The samples are ``EvalResult.samples`` (or :func:`~ocrquant.evaluation.evaluate.fidelity_samples`):
    dicts with the sample's ``key`` and its metric ``figures``."""
    if not metric.stat_names or not float_samples or not int8_samples:
        return None
    fs, qs = _stats(metric, float_samples), _stats(metric, int8_samples)
    keys = [k for k in fs if k in qs]
    if not keys:
        return None
    f = np.array([fs[k] for k in keys])
    q = np.array([qs[k] for k in keys])
    return paired_stats_interval(metric, f, q, resamples, level, seed)


def paired_stats_interval(
    metric: Metric,
    float_stats: np.ndarray,
    int8_stats: np.ndarray,
    resamples: int = RESAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """:func:`paired_delta_interval` on per-sample stats already aligned row by row (rows: samples,
    columns: ``metric.stat_names``). Callers that score many models on one fixed set (the
    ``--max-drop`` search) keep the rows and skip the per-sample dicts."""
    f, q = np.asarray(float_stats, dtype=float), np.asarray(int8_stats, dtype=float)
    if f.shape != q.shape or f.ndim != 2 or not len(f):
        raise ValueError(
            f"paired stats must be two equal (samples, stats) arrays, got {f.shape} and {q.shape}"
        )
    rng = np.random.default_rng(seed)
    # counts[r, i]: how often resample r drew sample i; totals are then one product per model
    n = len(f)
    counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)])
    delta = metric.primary_from_stats(counts @ q) - metric.primary_from_stats(counts @ f)
    return _interval(delta, level, n)


def _interval(delta: np.ndarray, level: float, samples: int) -> dict[str, float]:
    """The central ``level`` interval and standard error of resampled deltas."""
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(delta, [tail, 100 - tail])
    return {
        "low": float(low),
        "high": float(high),
        "se": float(delta.std()),
        "level": level,
        "resamples": len(delta),
        "samples": samples,
    }


def paired_mean_interval(
    float_samples: list[dict[str, Any]],
    int8_samples: list[dict[str, Any]],
    figure: str,
    resamples: int = RESAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float] | None:
    """The same paired bootstrap for a figure that is the mean of one per-sample value (rec's 1-NED,
    ``figures["norm_edit_sim"]``): interval of ``mean(int8) - mean(float)``; None when the samples do
    not carry ``figure``."""
    fs = {s["key"]: s["figures"].get(figure) for s in float_samples}
    qs = {s["key"]: s["figures"].get(figure) for s in int8_samples}
    keys = [k for k in fs if k in qs and fs[k] is not None and qs[k] is not None]
    if not keys:
        return None
    diff = np.array([float(qs[k]) - float(fs[k]) for k in keys])
    rng = np.random.default_rng(seed)
    n = len(diff)
    means = np.array([diff[rng.integers(0, n, n)].mean() for _ in range(resamples)])
    return _interval(means, level, n)
