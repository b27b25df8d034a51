"""``ocrquant sensitivity`` as a job: quantize the model (the configured recipe, ``auto`` included) and
its float reference once, split validation off the calibration directory, then rank every quantized
layer with :func:`ocrquant.analysis.sensitivity.analyze_layers`.

It sits in the tuning layer because the INT8 model it starts from may come from ``auto``'s search;
the analysis below it only edits and scores the two models it is handed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import onnx

from ocrquant.analysis.plot import plot_sensitivity
from ocrquant.analysis.sensitivity import (
    MODES,
    SensitivityResult,
    Validator,
    VariantBuilder,
    analyze_layers,
)
from ocrquant.data import open_dataset
from ocrquant.data.split import split_calibration
from ocrquant.errors import OcrQuantError
from ocrquant.fileio import scratch_dir
from ocrquant.quantization.config import QuantConfig
from ocrquant.tuning.executor import Executor
from ocrquant.tuning.pair import quantize_pair
from ocrquant.tuning.probes import executor_scorer
from ocrquant.zoo.resolve import resolve_model
from ocrquant.zoo.task import build_task, infer_task, input_shape_options


@dataclass(frozen=True)
class SensitivityConfig:
    """What ``ocrquant sensitivity`` measures per layer and on which validation images."""

    val_size: int = 300
    mode: str = "only-float"  # MODES
    metric: bool = True  # the task's primary metric with the layer's choice
    snr: bool = True  # the model output's SNR against FP32
    granularity: str = "block"
    latency: str = "estimate"  # LATENCY_SOURCES
    threads: int = 2
    snr_samples: int = 64
    progress: bool = True
    input_shape: tuple[int, int, int, int] | None = None  # fixes the model input (api.input_shape_options)


def sensitivity(
    model: str | Path,
    task: str | None,
    calib_data: str | Path,
    options: SensitivityConfig,
    config: QuantConfig | None = None,
    *,
    val_data: str | Path | None = None,
    work_dir: str | Path | None = None,
    json_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    executor: Executor | None = None,
) -> SensitivityResult:
    """``ocrquant sensitivity``: quantize (pipeline, twice), split validation off the calibration
    directory, score every quantized layer, write JSON/PNG if asked. ``input_shape`` fixes the model
    input for calibration and validation alike (``api.input_shape_options``). ``executor``: where the
    per-layer probes are scored (:mod:`ocrquant.tuning.probes`); None: in this process."""
    val_size, mode, metric, snr = options.val_size, options.mode, options.metric, options.snr
    granularity, latency, threads, snr_samples = (
        options.granularity, options.latency, options.threads, options.snr_samples,
    )  # fmt: skip
    progress, input_shape = options.progress, options.input_shape
    cfg = config or QuantConfig()
    if mode not in MODES:
        raise OcrQuantError(f"unknown sensitivity mode '{mode}' (known: {', '.join(MODES)})")
    if not (metric or snr):
        raise OcrQuantError("nothing to measure: enable the metric, the SNR or both")
    resolved = resolve_model(model)
    task_name = infer_task(resolved, task)
    if input_shape is not None:
        cfg = dataclasses.replace(
            cfg, task_options={**cfg.task_options, **input_shape_options(task_name, input_shape)}
        )
    calib = open_dataset(Path(calib_data), task_name)
    val = open_dataset(Path(val_data), task_name) if val_data is not None else None
    split = split_calibration(calib, cfg.calib_size, cfg.seed, val_size, val_data=val)
    with scratch_dir("sens") as tmp:
        work = Path(work_dir) if work_dir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        pair = quantize_pair(resolved, task_name, calib, work, cfg)
        task_obj = build_task(task_name, resolved, cfg.task_options)
        builder = VariantBuilder(
            onnx.load(str(pair.quantized.output)), onnx.load(str(pair.reference)), granularity
        )
        validator = Validator(
            task_obj,
            split.validation,
            pair.float_model,
            threads=threads,
            snr_samples=snr_samples if snr else 0,
            metric=metric,
            progress=progress,
        )
        result = analyze_layers(
            builder,
            validator,
            Path(pair.quantized.output),
            mode=mode,
            latency=latency,
            work_dir=work,
            scorer=executor_scorer(executor, validator),
        )
    result.model = str(resolved.path)
    result.rank_by = "metric" if metric else "snr"
    result.validation = split.describe()
    result.settings = {
        "target": cfg.target,
        "method": cfg.method,
        "calib_size": len(split.calibration),
        "threads": threads,
        "snr_samples": validator.snr_count,
        "metric": metric,
        "granularity": granularity,
    }
    if json_path is not None:
        result.save(json_path)
    if plot_path is not None:
        plot_sensitivity(result, plot_path)
    return result
