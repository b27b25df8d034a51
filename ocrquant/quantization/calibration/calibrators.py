"""Range selection: from a tensor's statistics to the [lo, hi] its quantizer should cover.

One :class:`Calibrator` interface, one subclass per method, one registry and factory (the layout of
onnxruntime's ``calibrate.py``). Every method works on the same streamed statistics
(:class:`TensorStats`), so switching methods only re-runs this arithmetic, never the model.

Symmetric targets need one threshold ``t`` (range [-t, t]); those methods work on the histogram of
``|x|`` (:func:`abs_histogram`). Asymmetric targets get a two-sided range. Every range is widened to
contain 0 (zero must be exactly representable: padding and ReLU produce exact zeros).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ocrquant.errors import OcrQuantError
from ocrquant.quantization.calibration.stats import CalibrationStats, TensorStats
from ocrquant.quantization.targets import QTYPES


@dataclass(frozen=True)
class QSpec:
    """The integer grid a range will be mapped to (what the optimal range depends on)."""

    dtype: str = "int8"
    symmetric: bool = False

    @property
    def levels(self) -> int:
        _, qmin, qmax = QTYPES[self.dtype]
        return qmax - qmin + 1


def abs_histogram(stats: TensorStats, bins: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of ``|x|`` over [0, max|x|] (counts, edges), folded from the signed histogram."""
    bins = bins or len(stats.hist)
    absmax = max(abs(stats.min), abs(stats.max), 1e-12)
    counts, edges = np.histogram(np.abs(stats.centers), bins=bins, range=(0.0, absmax), weights=stats.hist)
    return counts, edges


class Calibrator(ABC):
    """Computes a tensor's quantization range from its statistics."""

    name: ClassVar[str]

    @abstractmethod
    def compute_range(self, stats: TensorStats, spec: QSpec) -> tuple[float, float]:
        """[lo, hi] for one tensor."""

    def compute_ranges(
        self, stats: CalibrationStats, specs: dict[str, QSpec]
    ) -> dict[str, tuple[float, float]]:
        out = {}
        for name, spec in specs.items():
            if name not in stats.tensors:
                continue
            lo, hi = self.compute_range(stats.tensors[name], spec)
            out[name] = (min(float(lo), 0.0), max(float(hi), 0.0))
        return out


CALIBRATORS: dict[str, type[Calibrator]] = {}


def register_calibrator(name: str) -> Callable[[type[Calibrator]], type[Calibrator]]:
    def deco(cls: type[Calibrator]) -> type[Calibrator]:
        cls.name = name
        CALIBRATORS[name] = cls
        return cls

    return deco


def create_calibrator(name: str, **options) -> Calibrator:
    try:
        cls = CALIBRATORS[name]
    except KeyError:
        raise OcrQuantError(
            f"unknown calibration method '{name}' (known: {', '.join(CALIBRATORS)})"
        ) from None
    try:
        return cls(**options)
    except TypeError as exc:
        raise OcrQuantError(f"bad option for method {name}: {exc}") from None


@register_calibrator("min_max")
class MinMaxCalibrator(Calibrator):
    """The observed range: nothing clipped, resolution spent on outliers."""

    def compute_range(self, stats: TensorStats, spec: QSpec) -> tuple[float, float]:
        if spec.symmetric:
            t = max(abs(stats.min), abs(stats.max))
            return -t, t
        return stats.min, stats.max


@register_calibrator("percentile")
class PercentileCalibrator(Calibrator):
    """Clip the rarest ``100 - percentile`` percent of values (per tail when asymmetric)."""

    def __init__(self, percentile: float = 99.99) -> None:
        if not 50.0 < percentile <= 100.0:
            raise OcrQuantError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile

    def compute_range(self, stats: TensorStats, spec: QSpec) -> tuple[float, float]:
        q = self.percentile / 100.0
        if spec.symmetric:
            counts, edges = abs_histogram(stats)
            t = _quantile(counts, edges, q)
            return -t, t
        hi = _quantile(stats.hist, stats.edges, q)
        lo = _quantile(stats.hist, stats.edges, 1.0 - q)
        return max(lo, stats.min), min(hi, stats.max)


def _quantile(counts: np.ndarray, edges: np.ndarray, q: float) -> float:
    """Value below which a fraction ``q`` of the histogram lies (upper edge of the reaching bin)."""
    total = counts.sum()
    if total <= 0:
        return float(edges[-1])
    cdf = np.cumsum(counts) / total
    i = int(np.searchsorted(cdf, q - 1e-12))
    return float(edges[min(i + 1, len(edges) - 1)])


@register_calibrator("kl")
class EntropyCalibrator(Calibrator):
    """TensorRT's entropy calibration: the threshold whose quantized distribution Q loses the least
    information (KL divergence) against the clipped reference P.

    Symmetric specs (or tensors with negative values) search a threshold on ``|x|`` with
    ``levels / 2`` quantization bins; one-sided tensors (min >= 0, e.g. after ReLU) search on the
    positive histogram with all ``levels``. When the grid is finer than the histogram (16-bit types)
    KL cannot improve on the observed range, which is returned.

    ``mse_guard`` (default on): KL compares distribution shapes and is blind to how far the clipped
    values lie, so on a heavy-tailed tensor (PP-OCRv4 det's HardSwish outputs: bulk below 6, outliers
    near 100) it clips values the next layers need. A KL threshold is kept only where its expected
    squared quantize-dequantize error over the observed histogram is no larger than the unclipped
    range's; else the observed range is used. ``benchmarks/kl_guard.py`` measures both on held-out
    det_train images.
    """

    def __init__(self, bins: int | None = None, mse_guard: bool = True) -> None:
        self.bins = bins
        self.mse_guard = mse_guard

    def compute_range(self, stats: TensorStats, spec: QSpec) -> tuple[float, float]:
        chosen = self._kl_range(stats, spec)
        if not self.mse_guard:
            return chosen
        observed = MinMaxCalibrator().compute_range(stats, spec)
        if range_error(stats, spec, *chosen) > range_error(stats, spec, *observed):
            return observed
        return chosen

    def _kl_range(self, stats: TensorStats, spec: QSpec) -> tuple[float, float]:
        one_sided = stats.min >= 0 and not spec.symmetric
        nq = spec.levels if one_sided else spec.levels // 2
        if one_sided:
            counts, edges = stats.hist, stats.edges
        else:
            counts, edges = abs_histogram(stats, self.bins)
        if nq >= len(counts):
            return MinMaxCalibrator().compute_range(stats, spec)
        i = kl_threshold_index(np.asarray(counts, dtype=np.float64), nq)
        t = float(edges[i])
        if one_sided:
            return 0.0, t
        if spec.symmetric:
            return -t, t
        return max(-t, stats.min), min(t, stats.max)


def range_error(stats: TensorStats, spec: QSpec, lo: float, hi: float) -> float:
    """Expected squared quantize-dequantize error of the range [lo, hi] on ``spec``'s grid, summed over
    the tensor's histogram (bin centres), clipping and rounding together."""
    _, qmin, qmax = QTYPES[spec.dtype]
    centers, counts = stats.centers, stats.hist.astype(np.float64)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if spec.symmetric:
        half = qmax if qmin < 0 else (qmax - qmin) // 2
        t = max(abs(lo), abs(hi), 1e-12)
        step = np.array([t / half])
        return float(_grid_error(centers, counts, step, np.zeros(1), -half, half)[0])
    return float(_asym_error(centers, counts, np.array([lo]), np.array([hi]), qmin, qmax)[0])


def _kl_for(hist: np.ndarray, i: int, nq: int) -> float:
    p = hist[:i].copy()
    p[i - 1] += hist[i:].sum()
    raw = hist[:i]
    group = (np.arange(i) * nq) // i
    sums = np.bincount(group, weights=raw, minlength=nq)
    nonzero = np.bincount(group, weights=(raw > 0).astype(np.float64), minlength=nq)
    q = np.where(raw > 0, sums[group] / np.maximum(nonzero[group], 1), 0.0)
    ps, qs = p.sum(), q.sum()
    if ps <= 0 or qs <= 0:
        return np.inf
    p, q = p / ps, q / qs
    mask = p > 0
    q = np.where(q > 0, q, 1e-12)
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def kl_threshold_index(hist: np.ndarray, nq: int) -> int:
    """Histogram edge index (in ``[nq, len(hist)]``) minimising KL(P || Q); coarse scan then refine."""
    n = len(hist)
    stride = max(1, (n - nq) // 128)
    candidates = list(range(nq, n + 1, stride))
    if candidates[-1] != n:
        candidates.append(n)
    best = min(candidates, key=lambda i: _kl_for(hist, i, nq))
    fine = range(max(nq, best - stride), min(n, best + stride) + 1)
    return min(fine, key=lambda i: (_kl_for(hist, i, nq), i))


@register_calibrator("mse")
class MSECalibrator(Calibrator):
    """The range minimising the expected quantize-dequantize squared error over the histogram.

    The error of a candidate is evaluated exactly on the histogram's bin centres (round, clamp to the
    integer grid, dequantize), for the spec's bit width and symmetry, so clipping error and rounding
    error are traded as the real grid trades them. Symmetric: 1-D scan of the threshold. Asymmetric:
    coordinate descent, alternating scans of hi and lo.
    """

    def __init__(self, candidates: int = 100, rounds: int = 2) -> None:
        self.candidates = candidates
        self.rounds = rounds

    def compute_range(self, stats: TensorStats, spec: QSpec) -> tuple[float, float]:
        _, qmin, qmax = QTYPES[spec.dtype]
        frac = np.arange(1, self.candidates + 1) / self.candidates
        if spec.symmetric:
            counts, edges = abs_histogram(stats)
            centers = (edges[:-1] + edges[1:]) / 2
            t = float(edges[-1]) * frac
            steps = t / (qmax if qmin < 0 else (qmax - qmin) / 2)
            qmax_eff = qmax if qmin < 0 else (qmax - qmin) // 2
            err = _grid_error(centers, counts, steps, np.zeros_like(t), -qmax_eff, qmax_eff)
            best = float(t[int(np.argmin(err))])
            return -best, best
        centers, counts = stats.centers, stats.hist.astype(np.float64)
        lo, hi = min(stats.min, 0.0), max(stats.max, 0.0)
        for _ in range(self.rounds):
            his = max(stats.max, 0.0) * frac
            hi = float(
                his[int(np.argmin(_asym_error(centers, counts, np.full_like(his, lo), his, qmin, qmax)))]
            )
            if stats.min >= 0:
                break
            los = min(stats.min, 0.0) * frac
            lo = float(
                los[int(np.argmin(_asym_error(centers, counts, los, np.full_like(los, hi), qmin, qmax)))]
            )
        return lo, hi


def _grid_error(centers, counts, steps, zps, qmin, qmax) -> np.ndarray:
    """Sum over bins of count * (dequant(quant(center)) - center)^2, for each candidate step."""
    s = steps[:, None]
    q = np.clip(np.round(centers[None, :] / s) + zps[:, None], qmin, qmax)
    deq = (q - zps[:, None]) * s
    return ((deq - centers[None, :]) ** 2 * counts[None, :]).sum(axis=1)


def _asym_error(centers, counts, los, his, qmin, qmax) -> np.ndarray:
    steps = np.maximum(his - los, 1e-12) / (qmax - qmin)
    zps = np.clip(np.round(qmin - los / steps), qmin, qmax)
    return _grid_error(centers, counts, steps, zps, qmin, qmax)
