"""Sensitivity probes as trials: each variant of the INT8 model (one block float, or one layer
quantized alone) scored on the validation images by the executor's workers.

Why: the budget search ranks every block before it searches (PP-OCRv3 rec: 49 variants x 6.2 s on
2 cores) and ``ocrquant sensitivity`` scores every layer; the variants are independent, so a cluster
takes them side by side. A probe carries the variant's bytes and the validation set's recipe
(:class:`~ocrquant.analysis.sensitivity.ValidatorSpec`); each worker decodes the images and runs the
FP32 reference once per search (:data:`_VALIDATORS`), then scores every variant it is given, so a
probe scores the same wherever it runs (``tests/test_tuning.py`` checks a local Ray instance
against this process).
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass

import onnx

from ocrquant.analysis.sensitivity import Score, Scorer, Validator, ValidatorSpec
from ocrquant.tuning.executor import Executor, Trial

#: the validation set a worker holds, by search: one at a time (a worker serves one search)
_VALIDATORS: dict[str, Validator] = {}


@dataclass(frozen=True)
class ProbeSpec:
    """One variant to score: its model, and the validation set (``key`` names it within a search)."""

    validator: ValidatorSpec
    key: str
    model: bytes


def score_probe(spec: ProbeSpec) -> Score:
    """Score one variant on the worker's validation set, made on its first probe of the search."""
    validator = _VALIDATORS.get(spec.key)
    if validator is None:
        _VALIDATORS.clear()
        validator = _VALIDATORS[spec.key] = spec.validator.build()
    return validator.score_models([("", onnx.load_from_string(spec.model))])[0]


def executor_scorer(executor: Executor | None, validator: Validator) -> Scorer:
    """Where :func:`~ocrquant.analysis.sensitivity.analyze_layers` scores its variants: ``validator``
    itself in this process (no copy of the images, no second FP32 pass), else probes on ``executor``,
    each worker's onnxruntime with the executor's thread share."""
    if executor is None or executor.name == "in-process":
        return validator.score_models
    spec = dataclasses.replace(validator.spec, threads=executor.threads())
    key = uuid.uuid4().hex

    def score(named: list[tuple[str, onnx.ModelProto]]) -> list[Score]:
        trials = [Trial(name, ProbeSpec(spec, key, model.SerializeToString())) for name, model in named]
        return executor.map(score_probe, trials)

    return score
