"""ncnn INT8 from ocrquant's calibration: ncnn's calibration table and INT8 model, written in Python.

What ncnn's own tools do (``ncnn2table`` then ``ncnn2int8``), rebuilt on ocrquant's calibration so the
range method (kl, min_max, percentile, mse: the calibrator registry) and the calibration set are the
same as for every other target:

* **Table format** (ncnn's documented text format, one entry per line): ``<layer>_param_0 s1 ... sN``
  holds a layer's per-output-channel weight scales (``127 / absmax`` of the channel; per group for
  ConvolutionDepthWise; 1 for an all-zero channel), and ``<layer> s`` the scale of the layer's bottom
  blob (``127 / threshold``, symmetric int8 as ncnn quantizes activations to [-127, 127]).
* **INT8 model** (what ``ncnn2int8`` writes): for each Convolution / ConvolutionDepthWise /
  InnerProduct layer named in the table, param ``8=int8_scale_term`` (2 for Convolution and
  InnerProduct: per-output-channel weights; 1 for ConvolutionDepthWise: per-group weights), the
  weights stored as int8 (tag ``0x000D4B38``, rounded half away from zero, clamped to [-127, 127], as
  ncnn's ``quantize_to_int8``), and after the bias the weight scales then the bottom blob scale, as
  ``load_model`` reads them. Every other layer (Deconvolution, which ncnn has no INT8 kernel for,
  activations, pooling, resize...) is copied unchanged and runs in float.
* **Activation statistics** come from running the float ncnn model itself (``extract`` of each
  quantized layer's bottom blob, light mode off) on the calibration images: pnnx renames every tensor,
  so mapping ncnn blobs back to ONNX tensor names is not reliable, while the ncnn model's own blobs
  are exactly what the INT8 layers will see. The statistics are the calibration package's
  :class:`TensorStats` (two passes: exact min/max, then fixed-range histograms), so any registered
  calibrator computes the threshold, and they are cached: trying another method re-runs no model.
* **Errors.** A table entry naming a layer the model lacks, or a quantizable layer with weight scales
  but no bottom-blob scale (or the reverse), is a one-line :class:`OcrQuantError`; nothing is written
  then (outputs are written atomically).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ocrquant.errors import OcrQuantError
from ocrquant.fileio import atomic_path, scratch_dir, write_json_atomic, write_text_atomic
from ocrquant.frontends.ncnn_export import load_ncnn_model, sidecar_path
from ocrquant.frontends.ncnn_format import (
    INT8_LAYERS,
    Int8Table,
    Layer,
    NcnnParam,
    WeightRecord,
    read_bin,
    write_int8_model,
)
from ocrquant.quantization.calibration import CalibrationStats, QSpec, TensorStats, create_calibrator
from ocrquant.quantization.ncnn_speed import time_layers
from ocrquant.runtime import RuntimeOptions
from ocrquant.runtime.ncnn import NcnnRunner

log = logging.getLogger("ocrquant")

HIST_BINS = 2048
# Measured on PP-OCRv3 det, ICDAR2015 det_test (500), 200 det_train calibration images, ncnn INT8 hmean vs
# float 0.4234: percentile(99.99) 0.4162, mse 0.4109, kl (ncnn2table's own method) 0.3211.
DEFAULT_METHOD = "percentile"
# which of those layers get INT8: the ones measured faster in INT8 on this CPU, or every one
INT8_LAYER_CHOICES = ("faster", "all")


# --------------------------------------------------------------------------------------------- .param


# --------------------------------------------------------------------------------------------- .bin


# --------------------------------------------------------------------------------------------- scales


def quantizable_layers(param: NcnnParam, exclude: Iterable[str] = ()) -> list[Layer]:
    """Layers ncnn can run INT8 (float weights, a single bottom, no dynamic weight), minus ``exclude``."""
    skip = set(exclude)
    out = []
    for ly in param.layers:
        if ly.type not in INT8_LAYERS or ly.name in skip or len(ly.bottoms) != 1:
            continue
        if ly.geti(19) or ly.geti(8):  # dynamic weights, or already int8
            continue
        out.append(ly)
    return out


def weight_scales(
    param: NcnnParam, records: list[WeightRecord], layers: list[Layer]
) -> dict[str, np.ndarray]:
    """``127 / absmax`` per output channel (per group for depthwise), 1 where a channel is all zero."""
    weights = {r.layer: r.values for r in records if r.role == "weight"}
    out = {}
    for ly in layers:
        w = weights[ly.name]
        rows = ly.geti(7, 1) if ly.type == "ConvolutionDepthWise" else ly.geti(0)
        absmax = np.abs(w.reshape(rows, -1)).max(axis=1)
        out[ly.name] = np.where(absmax > 0, 127.0 / np.maximum(absmax, 1e-30), 1.0).astype(np.float32)
    return out


def activation_scales(
    stats: CalibrationStats, layers: list[Layer], method: str = DEFAULT_METHOD, **method_options: Any
) -> dict[str, float]:
    """``127 / threshold`` of each layer's bottom blob, the threshold from ocrquant's calibrator."""
    calibrator = create_calibrator(method, **method_options)
    spec = QSpec("int8", symmetric=True)
    out = {}
    for ly in layers:
        blob = ly.bottoms[0]
        if blob not in stats.tensors:
            raise OcrQuantError(f"no calibration statistics for blob '{blob}' (input of layer {ly.name})")
        lo, hi = calibrator.compute_range(stats.tensors[blob], spec)
        t = max(abs(float(lo)), abs(float(hi)))
        out[ly.name] = 127.0 / t if t > 0 else 1.0
    return out


# --------------------------------------------------------------------------------------------- table


# --------------------------------------------------------------------------------------------- INT8 model


# --------------------------------------------------------------------------------------------- calibration


def _hist(v: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    idx = ((v.reshape(-1).astype(np.float32) - np.float32(lo)) * np.float32(bins / (hi - lo))).astype(
        np.int64
    )
    np.clip(idx, 0, bins - 1, out=idx)
    return np.bincount(idx, minlength=bins)[:bins]


def collect_blob_statistics(
    runner: Any,
    blobs: list[str],
    inputs: Callable[[], Iterable[np.ndarray]],
    *,
    total: int | None = None,
    bins: int = HIST_BINS,
    progress: bool = True,
) -> CalibrationStats:
    """Two passes of the float ncnn model over ``inputs()``: exact min/max, then fixed-range histograms.

    ``runner`` is an :class:`ocrquant.runtime.ncnn.NcnnRunner` (its ``blob_values``). Same semantics as
    the calibration package's ONNX statistics, so its calibrators apply unchanged.
    """
    mins = dict.fromkeys(blobs, np.inf)
    maxs = dict.fromkeys(blobs, -np.inf)
    count = 0
    for x in tqdm(
        inputs(), total=total, desc="ncnn calibration 1/2 (range)", disable=not progress, leave=False
    ):
        count += 1
        for b, v in runner.blob_values(x, blobs).items():
            if v.size:
                lo, hi = float(v.min()), float(v.max())
                if not (np.isfinite(lo) and np.isfinite(hi)):
                    raise OcrQuantError(f"blob '{b}' produced NaN or Inf during calibration")
                mins[b], maxs[b] = min(mins[b], lo), max(maxs[b], hi)
    if count == 0:
        raise OcrQuantError("no calibration inputs")
    span = {
        b: (min(mins[b], 0.0), max(maxs[b], 0.0) if maxs[b] > min(mins[b], 0.0) else min(mins[b], 0.0) + 1e-8)
        for b in blobs
        if np.isfinite(mins[b])
    }
    hists = {b: np.zeros(bins, np.int64) for b in span}
    for x in tqdm(
        inputs(), total=total, desc="ncnn calibration 2/2 (histogram)", disable=not progress, leave=False
    ):
        for b, v in runner.blob_values(x, list(span)).items():
            hists[b] += _hist(v, *span[b], bins)
    return CalibrationStats({b: TensorStats(b, mins[b], maxs[b], hists[b], *span[b]) for b in span}, count)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / den) if den > 0 else 1.0


def sensitivity_fallback(
    float_model: Any,
    table: Int8Table,
    inputs: list[np.ndarray],
    *,
    target_cos: float = 0.99,
    max_float: int = 8,
    threads: int = 0,
    progress: bool = True,
) -> tuple[list[str], dict[str, Any]]:
    """Layers to keep float so the INT8 model's outputs reach ``target_cos`` (cosine to the float model,
    worst over ``inputs``, calibration images), at most ``max_float`` of them.

    Why: ncnn quantizes activations per tensor; in PP-OCRv3 det a few layers (the FPN/head convs
    reading residual sums with thresholds near 1000, some depthwise convs) lose most of their signal and
    the errors compound (all layers INT8: output cosine about 0.85 whatever the range method). Each
    candidate is scored once by leaving it alone in float (everything else INT8); layers are then kept
    float in the order of that gain until the target is met. Cost: one INT8 build and run per layer.
    """

    opts = RuntimeOptions(threads=threads)
    ref_runner = NcnnRunner(float_model.param, opts)
    name = ref_runner.input_names[0]
    ref = [ref_runner.run({name: x})[0] for x in inputs]

    with scratch_dir("ncnn-fallback") as tmp:
        trial = Path(tmp) / "trial.param"
        side = float_model.to_json()
        side["bin"] = trial.with_suffix(".bin").name
        write_json_atomic(trial.with_suffix(".json"), side)

        def score(keep_float: set[str]) -> float:
            sub = table.without(keep_float)
            write_int8_model(float_model.param, float_model.bin, sub, trial, trial.with_suffix(".bin"))
            runner = NcnnRunner(trial, opts)
            return min(_cosine(r, runner.run({name: x})[0]) for r, x in zip(ref, inputs, strict=True))

        base = score(set())
        chosen: list[str] = []
        report: dict[str, Any] = {"all_int8_cos": base, "target_cos": target_cos}
        if base >= target_cos or max_float <= 0:
            report["final_cos"] = base
            return chosen, report
        gains = {}
        for layer in tqdm(list(table.weights), desc="ncnn sensitivity", disable=not progress, leave=False):
            gains[layer] = score({layer}) - base
        ranked = sorted(gains, key=lambda k: -gains[k])
        current = base
        for layer in ranked[:max_float]:
            if gains[layer] <= 0:
                break
            trial_cos = score({*chosen, layer})
            if trial_cos <= current:  # single-layer gains do not always add up: keep only what helps
                continue
            chosen.append(layer)
            current = trial_cos
            if current >= target_cos:
                break
        report.update(final_cos=current, gains={k: round(gains[k], 5) for k in ranked[: max(max_float, 10)]})
    return chosen, report


@dataclass
class NcnnInt8Result:
    """What :func:`quantize_ncnn` produced."""

    param: Path
    bin: Path
    table: Path
    method: str
    calib_size: int
    quantized_layers: list[str]
    float_weight_layers: list[str]
    requantized_layers: list[str] = field(default_factory=list)
    slower_in_int8: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class NcnnQuantConfig:
    """How ncnn INT8 is calibrated and which layers get INT8 (see :func:`quantize_ncnn`)."""

    calib_size: int | None = None  # how many inputs calib_inputs yields (progress total); None: unknown
    method: str = DEFAULT_METHOD
    method_options: dict[str, Any] | None = None
    exclude: tuple[str, ...] = ()  # layers kept float
    int8_layers: str = "faster"  # INT8_LAYER_CHOICES
    min_gain: float = 0.05
    target_cos: float = 0.99
    max_float: int = 8
    threads: int = 0
    progress: bool = True


def quantize_ncnn(
    float_param: str | Path,
    calib_inputs: Callable[[], Iterable[np.ndarray]],
    out_param: str | Path,
    config: NcnnQuantConfig | None = None,
    *,
    stats_cache: Path | None = None,
    stats_key: str = "",
    fallback_inputs: list[np.ndarray] | None = None,
) -> NcnnInt8Result:
    """Float ncnn model + calibration inputs -> calibration table + INT8 model (+ sidecar JSON).

    ``int8_layers``: ``faster`` (default) quantizes only the layers that run at least ``min_gain``
    faster in INT8 than in float on this CPU, each timed alone on the first calibration input
    (:mod:`ocrquant.quantization.ncnn_speed`; the timings go into the sidecar); ``all`` quantizes every
    layer ncnn can run in INT8, as ``ncnn2int8`` does.

    ``calib_inputs`` yields preprocessed NCHW batches (batch 1) and is called twice. ``stats_cache``
    (an ``.npz``) keeps the blob statistics: another ``method`` then re-runs no model; ``stats_key`` says
    what the calibration inputs were (the cache is reused only for the same model and key). With
    ``fallback_inputs`` (a few calibration images), :func:`sensitivity_fallback` picks up to
    ``max_float`` layers to keep float until the INT8 output reaches ``target_cos``.
    """
    cfg = config or NcnnQuantConfig()
    calib_size, method, method_options, exclude = cfg.calib_size, cfg.method, cfg.method_options, cfg.exclude
    int8_layers, min_gain, target_cos, max_float = (
        cfg.int8_layers,
        cfg.min_gain,
        cfg.target_cos,
        cfg.max_float,
    )
    threads, progress = cfg.threads, cfg.progress
    if int8_layers not in INT8_LAYER_CHOICES:
        raise OcrQuantError(f"unknown int8_layers '{int8_layers}' (known: {', '.join(INT8_LAYER_CHOICES)})")
    float_model = load_ncnn_model(float_param)
    param = NcnnParam.read(float_model.param)
    records = read_bin(param, float_model.bin)
    layers = quantizable_layers(param, exclude)
    blobs = sorted({ly.bottoms[0] for ly in layers})
    stats = None
    key = hashlib.sha256(
        (float_model.param.read_text() + str(float_model.bin.stat().st_size) + stats_key).encode()
    ).hexdigest()
    if stats_cache is not None and stats_cache.is_file() and stats_cache.with_suffix(".key").is_file():
        if stats_cache.with_suffix(".key").read_text() == key:
            stats = CalibrationStats.load(stats_cache)
            if not set(blobs) <= set(stats.tensors):
                stats = None
    if stats is None:
        runner = NcnnRunner(float_model.param, RuntimeOptions(threads=threads))
        stats = collect_blob_statistics(runner, blobs, calib_inputs, total=calib_size, progress=progress)
        if stats_cache is not None:
            with atomic_path(stats_cache) as tmp:
                with open(tmp, "wb") as f:
                    stats.save(f)  # type: ignore[arg-type]
            write_text_atomic(stats_cache.with_suffix(".key"), key)
    table = Int8Table(
        weight_scales(param, records, layers),
        activation_scales(stats, layers, method, **(method_options or {})),
    )
    speed: dict[str, Any] = {"int8_layers": int8_layers}
    slower: list[str] = []
    if int8_layers == "faster" and table.weights:
        first = next(iter(calib_inputs()))
        timings = time_layers(float_model, param, records, table, first, threads=threads, progress=progress)
        slower = [t.layer for t in timings if not t.faster_in_int8(min_gain)]
        table = table.without(slower)
        speed.update(
            min_gain=min_gain,
            slower_in_int8=slower,
            layer_timings=[asdict(t) for t in timings],
        )
    out_param = Path(out_param)
    out_bin = out_param.with_suffix(".bin")
    table_path = out_param.with_suffix(".table")
    fallback: dict[str, Any] = {}
    if fallback_inputs:
        keep, fallback = sensitivity_fallback(
            float_model,
            table,
            fallback_inputs,
            target_cos=target_cos,
            max_float=max_float,
            threads=threads,
            progress=progress,
        )
        table = table.without(keep)
        fallback["kept_float"] = keep
    table.write(table_path)
    summary = write_int8_model(float_model.param, float_model.bin, table, out_param, out_bin)
    side = float_model.to_json()
    side.update(
        bin=out_bin.name,
        precision="int8",
        int8_table=table_path.name,
        calibration_method=method,
        calibration_inputs=stats.num_inputs,
        float_model=float_model.param.name,
        speed=speed,
        fallback=fallback,
        **summary,
    )
    write_json_atomic(sidecar_path(out_param), side)
    return NcnnInt8Result(
        out_param,
        out_bin,
        table_path,
        method,
        stats.num_inputs,
        summary["quantized_layers"],
        summary["float_weight_layers"],
        summary["requantized_layers"],
        slower,
    )


def quantize_with_table(
    float_param: str | Path, table_path: str | Path, out_param: str | Path
) -> dict[str, Any]:
    """Apply an existing calibration table (ours or ``ncnn2table``'s) to a float ncnn model."""

    float_model = load_ncnn_model(float_param)
    table = Int8Table.read(Path(table_path))
    out_param = Path(out_param)
    summary = write_int8_model(
        float_model.param,
        float_model.bin,
        table,
        out_param,
        out_param.with_suffix(".bin"),
        table_path=Path(table_path),
    )
    side = float_model.to_json()
    side.update(
        bin=out_param.with_suffix(".bin").name, precision="int8", int8_table=str(table_path), **summary
    )
    write_json_atomic(sidecar_path(out_param), side)
    return summary


def read_sidecar(param: Path) -> dict[str, Any]:
    side = Path(param).with_suffix(".json")
    return json.loads(side.read_text()) if side.is_file() else {}


# --------------------------------------------------------------------------------------------- report
