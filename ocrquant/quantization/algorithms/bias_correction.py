"""Empirical bias correction: remove the mean output shift quantization adds to each layer.

Quantized weights and inputs shift the *mean* of a conv's output (rounding errors do not average to
zero per channel). Running the float and the fake-quantized (QDQ) model on calibration inputs and
comparing each quantized Conv's per-channel output mean gives that shift; subtracting it from the
conv's (int32) bias removes it. Layers are corrected in order, ``group_size`` at a time, each group
measured after the ones before it were corrected (upstream corrections change downstream shifts). The
quantized model is walked forward layer by layer (:class:`GraphWalk`) rather than re-run from its input
for every group.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from tqdm import tqdm

from ocrquant.fileio import atomic_path
from ocrquant.quantization.algorithms.base import Algorithm, AlgorithmContext, register_algorithm
from ocrquant.quantization.calibration.stats import iterate_outputs
from ocrquant.quantization.calibration.walk import GraphWalk
from ocrquant.quantization.graph import initializers, producers


def _channel_means(
    outputs: Iterable[dict[str, np.ndarray]], clip: dict[str, tuple[float, float]]
) -> dict[str, np.ndarray]:
    """Per-channel means of each tensor *as its Q node passes it on* (clipped to its quantization
    range): a shift among values the next layer never sees (below a HardSwish floor, say) is no shift."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for outs in outputs:
        for t, v in outs.items():
            if t in clip:
                v = np.clip(v, *clip[t])
            c = v.shape[1]
            flat = np.moveaxis(v, 1, 0).reshape(c, -1)
            sums[t] = sums.get(t, 0) + flat.sum(axis=1, dtype=np.float64)
            counts[t] = counts.get(t, 0) + flat.shape[1]
    return {t: sums[t] / counts[t] for t in sums}


@register_algorithm("bias_correction", stage="qdq")
class BiasCorrection(Algorithm):
    def __init__(self, max_batches: int = 16, group_size: int = 1) -> None:
        self.max_batches = max_batches
        self.group_size = max(1, group_size)

    def apply(self, ctx: AlgorithmContext) -> dict[str, Any]:
        assert ctx.qdq_path is not None
        qmodel = onnx.load(str(ctx.qdq_path))
        inits = initializers(qmodel)
        prod = producers(qmodel)
        # By node name: the quantizer keeps node names but renames a Conv's output when it folds the
        # ReLU after it away. The QDQ Conv then emits the pre-ReLU value and its Q node (zero point at
        # the range floor) applies the ReLU, so both means are taken after clipping to that range.
        fconv = {n.name: n.output[0] for n in ctx.model.graph.node if n.op_type == "Conv" and n.name}
        targets = {}  # QDQ conv output -> (float conv output, int32 bias initializer, bias scale)
        for node in qmodel.graph.node:
            if node.op_type != "Conv" or len(node.input) < 3 or node.name not in fconv:
                continue
            dq = prod.get(node.input[2])
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
                continue
            targets[node.output[0]] = (
                fconv[node.name],
                inits[dq.input[0]],
                numpy_helper.to_array(inits[dq.input[1]]),
            )
        names = list(targets)
        if not names:
            return {"corrected": 0}
        clip = {t: ctx.plan.ranges[t] for t in names if t in ctx.plan.ranges}
        float_names = [targets[t][0] for t in names]
        float_clip = {targets[t][0]: r for t, r in clip.items()}
        inputs = list(itertools.islice(ctx.batches(), self.max_batches))
        ref_by_float = _channel_means(
            iterate_outputs(ctx.model, float_names, inputs, desc="bias correction (float)", progress=False),
            float_clip,
        )
        ref = {t: ref_by_float[targets[t][0]] for t in names}
        walk = GraphWalk(qmodel, inputs)
        shifts = []
        # In topological order, a group at a time, each measured after the groups before it were
        # corrected: a layer's shift is partly inherited from its inputs, so correcting every layer
        # from one measurement counts upstream shifts twice (measured on PP-OCRv3 rec: all at once
        # took the output SQNR from 19.9 dB to 4.7 dB).
        bar = {"desc": "bias correction", "unit": "group", "disable": not ctx.progress, "leave": False}
        for start in tqdm(range(0, len(names), self.group_size), **bar):
            group = names[start : start + self.group_size]
            got = _channel_means(walk.values(qmodel, group), clip)
            for t in group:
                _, proto, scale = targets[t]
                delta = got[t] - ref[t]
                q = numpy_helper.to_array(proto).astype(np.int64)
                step = np.round(delta / scale.astype(np.float64)).astype(np.int64)
                new = np.clip(q - step, np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
                proto.CopyFrom(numpy_helper.from_array(new, proto.name))
                shifts.append(float(np.abs(delta).mean()))
            walk.advance(qmodel, group)
        with atomic_path(ctx.qdq_path) as tmp:
            onnx.save(qmodel, str(tmp))
        return {"corrected": len(names), "mean_abs_shift": float(np.mean(shifts)) if shifts else 0.0}
