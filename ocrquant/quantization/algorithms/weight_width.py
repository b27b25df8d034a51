"""Choose where saturation-safe weights are needed, by measuring the real integer kernels.

Why: without VNNI, onnxruntime's u8 x s8 kernels add two products into a saturating int16
(:func:`ocrquant.quantization.targets.cpu_has_vnni`). The host profile's narrow weight type (pair-safe
int8, ``quantization/saturation.py``; or the 7-bit grid) removes that overflow at some cost in weight
precision, and which layers need it depends on the model's activations: the normalised image fills
the whole u8 grid, so the image conv always saturates; deeper activations are often small. Measured
(output SQNR vs float on calibration data, fused kernels): PP-OCRv3 rec 20.8 dB narrowing only the
image conv vs 14.3 dB narrowing every dense conv (pair-safe), det 7.5 vs 11.1 dB. So the scope is
measured, not fixed: each candidate scope is written as a QDQ model and run through onnxruntime's fused
kernels (the kernels that deploy) on the first calibration batches; the scope whose output is closest
to the float model's (SQNR) wins. Only runs when the host profile narrows weights (no VNNI).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import onnx

from ocrquant.quantization.algorithms.base import Algorithm, AlgorithmContext, register_algorithm
from ocrquant.quantization.algorithms.fallback import _session, output_sqnr
from ocrquant.quantization.qdq import NARROW_DTYPES, write_qdq_model

SCOPES = ("input", "dense")


@register_algorithm("weight_width", stage="plan")
class WeightWidth(Algorithm):
    def __init__(self, max_batches: int = 16, scopes: tuple[str, ...] = SCOPES) -> None:
        self.max_batches = max_batches
        self.scopes = tuple(scopes)

    def apply(self, ctx: AlgorithmContext) -> dict[str, Any]:
        profile = ctx.plan.profile
        if profile.weight_dtype not in NARROW_DTYPES:
            return {"skipped": "weights are not narrowed on this host"}
        inputs = list(itertools.islice(ctx.batches(), self.max_batches))
        fsess = _session(ctx.model)
        name = fsess.get_inputs()[0].name
        reference = [fsess.run(None, {name: x}) for x in inputs]
        sqnr = {}
        for scope in self.scopes:
            plan = dataclasses.replace(
                ctx.plan, profile=dataclasses.replace(profile, narrow_weight_scope=scope)
            )
            path = ctx.work_dir / f"weight_width_{scope}.onnx"
            write_qdq_model(ctx.model, plan, path)
            sqnr[scope] = output_sqnr(reference, onnx.load(str(path)), inputs)
        best = max(sqnr, key=sqnr.get)
        ctx.plan.profile = dataclasses.replace(profile, narrow_weight_scope=best)
        return {"scope": best, "output_sqnr_db": {k: round(v, 2) for k, v in sqnr.items()}}
