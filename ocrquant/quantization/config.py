"""Settings and result of one quantization run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class QuantConfig:
    """Everything that decides the quantized model (recorded in the sidecar).

    Defaults are chosen to give a good ``ort-cpu`` model with no other flag; see the README section
    on quantization for the measurements behind them.
    """

    method: str = "min_max"  # min_max | kl | percentile | mse (min_max measured best on PP-OCRv3 cls)
    method_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"percentile": 99.99}
    target: str = "ort-cpu"
    calib_size: int = 200
    batch_size: int = 8
    seed: int = 0
    per_channel: bool | None = None  # None: the target's choice
    exclude: list[str] = field(default_factory=list)  # node names, op types or glob patterns kept float
    # None: the target profile's default_algorithms (ort-cpu: hs_cle, hs_floor); [] runs none.
    algorithms: list[str] | None = None
    algorithm_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    dtype_overrides: dict[str, str] = field(default_factory=dict)  # activation tensor -> int16 etc.
    cache_dir: Path | None = None  # calibration cache; None: $OCRQUANT_HOME/calib
    use_cache: bool = True
    task_options: dict[str, Any] = field(default_factory=dict)
    fuse_hardswish: bool | None = None  # None: the target's layout choice (ort-cpu keeps it decomposed)
    bins: int = 2048
    progress: bool = True


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
