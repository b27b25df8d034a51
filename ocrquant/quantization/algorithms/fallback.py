"""Automatic float fallback: keep the few Convs float whose quantization hurts the output most.

Why: after HS-CLE the remaining INT8 error of PP-OCRv3 rec is spread over many layers (no single Conv
left float recovers more than ~1.5 points: ``ocrquant sensitivity -m ppocrv3-rec``), but a small
greedy set can still be worth its speed cost. Each float Conv costs a DQ + Q pair and the integer
kernel, so the set is kept small (``max_layers``) and a layer is only kept float when it raises the
output SQNR by ``min_gain_db``.

How (stage ``plan``, calibration data only, never the test set): write the QDQ model of the current
plan once, then build each candidate by graph surgery on that model (the candidate Conv reads the float
input tensor and float weights instead of their DQ outputs, which is what excluding it does), and
measure the model output's SQNR against the float model on the first ``max_batches`` calibration
batches. Candidates are ranked by their single-layer gain, then added greedily while the combined
SQNR keeps improving. The chosen nodes go to ``plan.exclude`` and are listed in the sidecar.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from ocrquant.quantization.algorithms.base import Algorithm, AlgorithmContext, register_algorithm
from ocrquant.quantization.graph import initializers, producers
from ocrquant.quantization.qdq import write_qdq_model

log = logging.getLogger("ocrquant")


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def output_sqnr(reference: list[list[np.ndarray]], model: onnx.ModelProto, inputs: list[np.ndarray]) -> float:
    """SQNR (dB) of all model outputs against the reference outputs, summed over the inputs."""
    sess = _session(model)
    name = sess.get_inputs()[0].name
    signal = noise = 0.0
    for ref, x in zip(reference, inputs, strict=True):
        for r, q in zip(ref, sess.run(None, {name: x}), strict=True):
            r64 = r.astype(np.float64)
            signal += float(np.sum(r64**2))
            noise += float(np.sum((r64 - q.astype(np.float64)) ** 2))
    return 10 * np.log10(max(signal, 1e-30) / max(noise, 1e-30))


def float_conv_variant(
    qmodel: onnx.ModelProto, float_model: onnx.ModelProto, names: list[str]
) -> onnx.ModelProto:
    """A copy of ``qmodel`` where the Convs ``names`` compute in float from the float input tensor."""
    m = onnx.ModelProto()
    m.CopyFrom(qmodel)
    finits = initializers(float_model)
    fnodes = {n.name: n for n in float_model.graph.node}
    available = {i.name for i in m.graph.input} | {o for n in m.graph.node for o in n.output}
    for node in m.graph.node:
        if node.name not in names or node.name not in fnodes:
            continue
        src = fnodes[node.name]
        if src.input[0] not in available:
            continue
        node.input[0] = src.input[0]
        for slot in (1, 2):
            if slot < len(src.input) and src.input[slot] in finits:
                copy = f"{src.input[slot]}_fallback_float"
                if copy not in {i.name for i in m.graph.initializer}:
                    m.graph.initializer.append(
                        numpy_helper.from_array(numpy_helper.to_array(finits[src.input[slot]]), copy)
                    )
                node.input[slot] = copy
    return m


@register_algorithm("fallback", stage="plan")
class SensitivityFallback(Algorithm):
    def __init__(self, max_layers: int = 3, min_gain_db: float = 0.3, max_batches: int = 16) -> None:
        self.max_layers = max_layers
        self.min_gain_db = min_gain_db
        self.max_batches = max_batches

    def apply(self, ctx: AlgorithmContext) -> dict[str, Any]:
        staged = ctx.work_dir / "fallback_probe.onnx"
        write_qdq_model(ctx.model, ctx.plan, staged)
        qmodel = onnx.load(str(staged))
        prod = producers(qmodel)
        candidates = [
            n.name
            for n in qmodel.graph.node
            if n.op_type == "Conv" and n.input[0] in prod and prod[n.input[0]].op_type == "DequantizeLinear"
        ]
        inputs = list(itertools.islice(ctx.batches(), self.max_batches))
        fsess = _session(ctx.model)
        fname = fsess.get_inputs()[0].name
        reference = [fsess.run(None, {fname: x}) for x in inputs]
        base = output_sqnr(reference, qmodel, inputs)
        single = {
            c: output_sqnr(reference, float_conv_variant(qmodel, ctx.model, [c]), inputs) - base
            for c in candidates
        }
        ranked = sorted(single, key=single.get, reverse=True)
        chosen: list[str] = []
        current = base
        for c in ranked[: 2 * self.max_layers]:
            if len(chosen) >= self.max_layers or single[c] < self.min_gain_db:
                break
            trial = output_sqnr(reference, float_conv_variant(qmodel, ctx.model, chosen + [c]), inputs)
            if trial - current >= self.min_gain_db:
                chosen.append(c)
                current = trial
        ctx.plan.exclude.extend(n for n in chosen if n not in ctx.plan.exclude)
        log.info("fallback: float %s, output SQNR %.2f -> %.2f dB", chosen, base, current)
        return {
            "float_layers": chosen,
            "sqnr_db_before": round(base, 2),
            "sqnr_db_after": round(current, 2),
            "single_layer_gain_db": {c: round(single[c], 2) for c in ranked[:8]},
        }
