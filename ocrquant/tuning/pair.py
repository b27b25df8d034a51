"""The configured INT8 model and the pipeline's float graph of it, quantized once: what the sensitivity
job and the budget search edit into variants (see :mod:`ocrquant.analysis.sensitivity`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from ocrquant.analysis.sensitivity import KEEPER_FALLBACK_OPS, PASSTHROUGH_OPS, Q_OPS
from ocrquant.data import Dataset
from ocrquant.errors import OcrQuantError
from ocrquant.quantization.config import QuantConfig, pinned_config
from ocrquant.tuning.method_search import quantize
from ocrquant.zoo.resolve import ResolvedModel


# ------------------------------------------------------------------------------------ the pipeline pair
@dataclass
class QuantizedPair:
    """The configured INT8 model and the pipeline's float graph (every node excluded)."""

    quantized: Any  # QuantResult
    reference: Path
    float_model: Path
    task: str


def quantize_pair(
    model: ResolvedModel,
    task: str | None,
    calib: Dataset,
    work_dir: Path,
    config: Any = None,
) -> QuantizedPair:
    """Run the quantization pipeline twice (see the module doc); the second run hits the calibration
    cache the first one filled."""
    # the plain Q/DQ layout: VariantBuilder edits these models' Q/DQ nodes, and a graph rewrite (a Mul
    # folded into a DequantizeLinear's scale) would leave nothing to give a float block back
    cfg = dataclasses.replace(config or QuantConfig(), graph_passes=False)
    work_dir.mkdir(parents=True, exist_ok=True)
    base = quantize(model, task, calib, work_dir / "int8.onnx", cfg)
    qmodel = onnx.load(str(base.output))
    nodes = [n for n in qmodel.graph.node if n.op_type not in Q_OPS]
    # Not every node: with an empty selection ORT's QDQQuantizer quantizes *all* nodes. One node without
    # float initializers stays selected; only initializers are read from this model, so the Q/DQ pair it
    # gets does not matter. A data-movement node if there is one, else one ORT's quantizer keeps in the
    # graph (not a Relu/Clip: it may fold those into a QuantizeLinear); PP-OCRv3 det has no
    # Reshape/Transpose, its keeper is a Concat or Resize.
    inits = {i.name for i in qmodel.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    unweighted = [n for n in nodes if not any(i in inits for i in n.input)]
    keeper = next((n.name for n in unweighted if n.op_type in PASSTHROUGH_OPS), None) or next(
        (n.name for n in unweighted if n.op_type in KEEPER_FALLBACK_OPS), None
    )
    if keeper is None:
        raise OcrQuantError(
            "cannot build the float reference: the model has no Reshape/Transpose/Concat/Resize node"
        )
    ref_cfg = dataclasses.replace(
        pinned_config(cfg, base.output), exclude=sorted({n.name for n in nodes if n.name != keeper})
    )
    ref = quantize(model, base.task, calib, work_dir / "reference.onnx", ref_cfg)
    return QuantizedPair(base, Path(ref.output), Path(model.path), base.task)
