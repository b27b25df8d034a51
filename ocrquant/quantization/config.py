"""Settings and result of one quantization run."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ocrquant.fileio import read_sidecar

# Range method per task when none is given, measured on PP-OCRv3 with the ort-cpu defaults (det: first
# 100 det_test images, hmean fp32 0.4376 -> min_max 0.3967, percentile 99.99 0.4184, 99.999 0.4232,
# 99.9 0.3892, kl 0.3365: the DB maps' rare large activations waste min_max's grid; rec/cls: min_max
# with the HardSwish floor; `ocrquant quantize --method M` then `ocrquant eval --limit 100` per method).
# No fixed default: which clip suits a model differs (measured: det a high percentile, cls the MSE clip),
# and choosing it on a test set would tune to that set. "auto" picks it per model on held-out
# calibration-side images (ocrquant/tuning/method_search.py).
TASK_DEFAULT_METHODS: dict[str, tuple[str, dict[str, Any]]] = {}
FALLBACK_METHOD: tuple[str, dict[str, Any]] = ("auto", {})


def resolve_method(config: QuantConfig, task: str) -> tuple[str, dict[str, Any]]:
    """The range method and its options for ``task``: the config's, else the task's measured default."""
    default_name, default_options = TASK_DEFAULT_METHODS.get(task, FALLBACK_METHOD)
    if config.method is None:
        return default_name, dict(default_options if config.method_options is None else config.method_options)
    return config.method, dict(config.method_options or {})


@dataclass(frozen=True)
class QdqStart:
    """A QDQ model a run of the same settings already wrote, with the qdq-stage algorithms ``applied``
    (in order, before the target's graph passes) and their ``reports``.

    Why: ``auto`` tries each validated algorithm on top of the model it has chosen so far. A trial that
    re-ran every earlier qdq-stage algorithm repeated minutes of work per trial (PP-OCRv6 small rec:
    AdaRound 6 min, then again under bias correction's and distill's trials); continuing from the
    chosen model's file gives the same model, since qdq-stage algorithms talk only through that file.
    """

    path: Path
    applied: tuple[str, ...]
    reports: dict[str, Any] = field(default_factory=dict)


@dataclass
class QuantConfig:
    """Everything that decides the quantized model (recorded in the sidecar).

    Defaults are chosen to give a good ``ort-cpu`` model with no other flag; see the README section
    on quantization for the measurements behind them.
    """

    method: str | None = None  # min_max | kl | percentile | mse | auto; None: TASK_DEFAULT_METHODS
    method_options: dict[str, Any] | None = None  # e.g. {"percentile": 99.99}; None: the task default's
    target: str = "ort-cpu"
    calib_size: int = 200
    batch_size: int = 8
    seed: int = 0
    per_channel: bool | None = None  # None: the target's choice
    exclude: list[str] = field(default_factory=list)  # node names, op types or glob patterns kept float
    # None: the target profile's default_algorithms (ort-cpu: hs_cle, hs_floor); [] runs none.
    algorithms: list[str] | None = None
    extra_algorithms: list[str] = field(default_factory=list)  # appended to the defaults (CLI --algo)
    algorithm_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    dtype_overrides: dict[str, str] = field(default_factory=dict)  # activation tensor -> int16 etc.
    cache_dir: Path | None = None  # calibration cache; None: $OCRQUANT_HOME/calib
    use_cache: bool = True
    task_options: dict[str, Any] = field(default_factory=dict)
    # image ids (ocrquant.data.calibration.image_id) no algorithm may learn from: auto's held-out images
    holdout: list[str] = field(default_factory=list)
    fuse_hardswish: bool | None = None  # None: the target's layout choice (ort-cpu keeps it decomposed)
    bins: int = 2048
    progress: bool = True
    # the target's graph rewrites on the final model (TargetProfile.qdq_passes); off where a tool edits
    # the written model's Q/DQ nodes afterwards (sensitivity variants, the budget search's pair)
    graph_passes: bool = True
    # continue from this QDQ model (its qdq-stage algorithms are not run again), and where to keep this
    # run's QDQ model before the graph passes, for a later run to continue from (method_search)
    qdq_start: QdqStart | None = None
    save_prepass: Path | None = None


@dataclass
class QuantResult:
    output: Path
    sidecar: Path
    task: str
    target: str
    method: str
    num_calibration_images: int
    node_counts: dict[str, dict[str, int]]
    float_nodes: dict[str, dict[str, str]]
    timings: dict[str, float]
    algorithms: dict[str, Any]
    cache_hit: bool


def pinned_config(config: Any, quantized: str | Path) -> Any:
    """``config`` with the method, options, calibration size and algorithms the pipeline actually
    used for ``quantized`` (read from its sidecar).

    Every later model of an analysis (the float reference, a variant with layers kept float, the
    final mixed-precision model) must repeat that float stage exactly; with ``method="auto"`` a new
    run would search again, and could choose differently once layers are excluded.
    """
    settings = read_sidecar(quantized)["settings"]
    return replace(
        config,
        method=settings["method"],
        method_options=dict(settings["method_options"]),
        calib_size=settings["calib_size"],
        algorithms=list(settings["algorithms"]),
        extra_algorithms=[],
    )
