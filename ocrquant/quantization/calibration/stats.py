"""Streaming activation statistics: run the float model on calibration inputs, keep min/max and a
histogram per tensor, never the activations themselves.

The graph is augmented with every tensor to observe as an extra output (as onnxruntime's own
calibrator does), so one session run yields all of them for one batch; the batch's arrays are reduced
to statistics and dropped before the next batch runs.

Inputs of different sizes (det images keep their own sizes, rec crops their own widths) make a naive
histogram merge wrong: each batch would bin over its own range. We therefore run two passes: pass 1
fixes each tensor's [min, max]; pass 2 bins every batch over that fixed range, so histograms add up
exactly. Both passes are cached (see :mod:`ocrquant.quantization.calibration.cache`), so trying another
range method never re-runs the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from tqdm import tqdm

from ocrquant.errors import OcrQuantError
from ocrquant.fileio import scratch_dir

DEFAULT_BINS = 2048
#: threads reducing one batch's tensors to min/max and histograms while onnxruntime is idle between
#: runs (numpy releases the GIL in these loops; every count is the same as one thread's). PP-OCRv3 det,
#: 140 det_train images at 544x960, 2-core AMX Xeon, two runs each, fresh caches: 97 s in one thread,
#: 74 s in two, the model written byte-identical (``ocrquant quantize -m ppocrv3-det --method
#: percentile --calib-size 140 ...``, its sidecar's ``timings.calibration_s``)
STATS_THREADS = 2


@dataclass
class TensorStats:
    """One tensor's observations: exact min/max and a histogram over [hist_lo, hist_hi]."""

    name: str
    min: float
    max: float
    hist: np.ndarray  # int64 counts, len = bins
    hist_lo: float
    hist_hi: float

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(self.hist_lo, self.hist_hi, len(self.hist) + 1)

    @property
    def centers(self) -> np.ndarray:
        e = self.edges
        return (e[:-1] + e[1:]) / 2


@dataclass
class CalibrationStats:
    """Statistics of every observed tensor, plus how many inputs produced them."""

    tensors: dict[str, TensorStats]
    num_inputs: int

    def save(self, path: Path) -> None:
        names = list(self.tensors)
        np.savez_compressed(
            path,
            names=np.array(names),
            mins=np.array([self.tensors[n].min for n in names], dtype=np.float64),
            maxs=np.array([self.tensors[n].max for n in names], dtype=np.float64),
            hist_lo=np.array([self.tensors[n].hist_lo for n in names], dtype=np.float64),
            hist_hi=np.array([self.tensors[n].hist_hi for n in names], dtype=np.float64),
            hists=np.stack([self.tensors[n].hist for n in names]) if names else np.zeros((0, 1), np.int64),
            num_inputs=np.array(self.num_inputs),
        )

    @classmethod
    def load(cls, path: Path) -> CalibrationStats:
        with np.load(path, allow_pickle=False) as z:
            tensors = {
                str(n): TensorStats(str(n), float(mn), float(mx), h.astype(np.int64), float(lo), float(hi))
                for n, mn, mx, h, lo, hi in zip(
                    z["names"], z["mins"], z["maxs"], z["hists"], z["hist_lo"], z["hist_hi"], strict=True
                )
            }
            return cls(tensors, int(z["num_inputs"]))


def augment_model(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs also include ``tensors`` (float32, shape left open)."""
    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    existing = {o.name for o in aug.graph.output}
    aug.graph.output.extend(_outputs([t for t in tensors if t not in existing]))
    return aug


def has_subgraphs(model: onnx.ModelProto) -> bool:
    """Whether a node holds a graph (If/Loop/Scan bodies, which read outer tensors implicitly, so the
    graph cannot be cut into parts by its edges)."""
    return any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in model.graph.node
        for a in n.attribute
    )


def observed_model(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that computes ``tensors`` and nothing else: its outputs are ``tensors`` and
    its nodes those they depend on (with their initializers).

    Why: onnxruntime runs every node of a session's graph whatever the fetches, and the per-layer
    algorithms (AdaRound, bias correction) ask for one early tensor hundreds of times. On PP-OCRv3 rec's
    QDQ model (batch 8, 2 threads) the input of the conv a quarter of the way in costs 26.6 ms from its
    prefix against 160 ms from the whole graph, with the same values (the same kernels run on the
    same inputs; ``tests/test_quantization.py::test_observed_model_is_exact``). Graphs with control flow
    (If/Loop bodies read outer tensors implicitly) keep every node."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    del graph.output[:]
    graph.output.extend(_outputs(tensors))
    if has_subgraphs(model):
        return out
    producer = {o: i for i, n in enumerate(model.graph.node) for o in n.output}
    keep: set[int] = set()
    stack = list(tensors)
    while stack:
        i = producer.get(stack.pop())
        if i is None or i in keep:
            continue
        keep.add(i)
        stack.extend(t for t in model.graph.node[i].input if t)
    del graph.node[:]
    graph.node.extend(n for i, n in enumerate(model.graph.node) if i in keep)
    used = {t for n in graph.node for t in n.input} | set(tensors)
    dropped = {i.name for i in model.graph.initializer if i.name not in used}
    del graph.initializer[:]
    graph.initializer.extend(i for i in model.graph.initializer if i.name not in dropped)
    del graph.input[:]
    graph.input.extend(i for i in model.graph.input if i.name not in dropped)
    return out


def _outputs(tensors: list[str]) -> list[onnx.ValueInfoProto]:
    return [onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors]


def observer_session(
    model: onnx.ModelProto,
    threads: int = 0,
    level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
) -> ort.InferenceSession:
    """A session on ``model`` (saved to a temporary file, so models past protobuf's 2 GB limit load).
    ``level``: basic keeps every tensor a float model computes; ORT_ENABLE_ALL runs a QDQ model as it
    ships, in the fused integer kernels."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = level
    # No spinning: between runs the caller's numpy work (AdaRound's products, histograms) needs the
    # cores; an idle pool spinning beside a 4096 x 1152 float64 product made it 1.55x slower (1.07 vs
    # 0.69 s over 10 runs, 2 cores).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        so.intra_op_num_threads = threads
    with scratch_dir("calib") as tmp:
        path = Path(tmp) / "augmented.onnx"
        onnx.save(model, str(path))
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def iterate_outputs(
    model: onnx.ModelProto,
    tensors: list[str],
    batches: Iterable[np.ndarray],
    *,
    total: int | None = None,
    desc: str = "calibration",
    progress: bool = True,
    deployed: bool = False,
) -> Iterable[dict[str, np.ndarray]]:
    """Yield ``{tensor: value}`` for each batch, one batch alive at a time. ``deployed``: run a QDQ
    model as it ships (onnxruntime's fused integer kernels, ORT_ENABLE_ALL), so a tensor is what the
    deployed model computes there; else every node as written (float Q/DQ arithmetic)."""
    level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if deployed else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    )
    sess = observer_session(observed_model(model, tensors), level=level)
    input_name = sess.get_inputs()[0].name
    for x in tqdm(batches, total=total, desc=desc, unit="batch", disable=not progress, leave=False):
        outs = sess.run(tensors, {input_name: x})
        yield dict(zip(tensors, outs, strict=True))


def _check_finite(name: str, lo: float, hi: float) -> None:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise OcrQuantError(
            f"tensor '{name}' produced NaN or Inf during calibration (min {lo}, max {hi}); "
            "check the input preprocessing or the model"
        )


def collect_statistics(
    model: onnx.ModelProto,
    tensors: list[str],
    batches: Callable[[], Iterable[np.ndarray]],
    *,
    num_batches: int | None = None,
    bins: int = DEFAULT_BINS,
    progress: bool = True,
) -> CalibrationStats:
    """Two streamed passes over ``batches()`` (called twice): min/max, then fixed-range histograms."""
    mins = {t: np.inf for t in tensors}
    maxs = {t: -np.inf for t in tensors}
    count = 0
    with ThreadPoolExecutor(STATS_THREADS) as pool:
        for outs in iterate_outputs(
            model, tensors, batches(), total=num_batches, desc="calibration 1/2 (range)", progress=progress
        ):
            count += 1
            for t, extent in zip(outs, pool.map(_extent, outs.values()), strict=True):
                if extent is None:
                    continue
                _check_finite(t, *extent)
                mins[t] = min(mins[t], extent[0])
                maxs[t] = max(maxs[t], extent[1])
        if count == 0:
            raise OcrQuantError("no calibration inputs")
        seen = [t for t in tensors if np.isfinite(mins[t])]
        lo_hi = {t: _hist_range(mins[t], maxs[t]) for t in seen}
        hists = {t: np.zeros(bins, dtype=np.int64) for t in seen}
        for outs in iterate_outputs(
            model, seen, batches(), total=num_batches, desc="calibration 2/2 (histogram)", progress=progress
        ):
            counts = pool.map(lambda item: _histogram(item[1], *lo_hi[item[0]], bins), outs.items())
            for t, c in zip(outs, counts, strict=True):
                hists[t] += c
    return CalibrationStats({t: TensorStats(t, mins[t], maxs[t], hists[t], *lo_hi[t]) for t in seen}, count)


def _extent(v: np.ndarray) -> tuple[float, float] | None:
    return None if v.size == 0 else (float(v.min()), float(v.max()))


def _hist_range(lo: float, hi: float) -> tuple[float, float]:
    """Histogram span: the observed range, widened to contain 0 and to be non-empty."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0:
        hi = lo + 1e-8
    return lo, hi


def _histogram(v: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    """Fixed-range histogram via bincount (several times faster than np.histogram on large maps)."""
    x = v.reshape(-1).astype(np.float32, copy=False)
    idx = ((x - np.float32(lo)) * np.float32(bins / (hi - lo))).astype(np.int64)
    np.clip(idx, 0, bins - 1, out=idx)
    return np.bincount(idx, minlength=bins)[:bins]
