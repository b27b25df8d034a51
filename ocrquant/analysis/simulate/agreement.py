"""Simulator vs onnxruntime on the same QDQ model: how closely the integer pipeline reproduces the
runtime's INT8 outputs (cosine, max abs error, and the rate of identical integer output values)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from ocrquant.analysis.compare import ErrorStats
from ocrquant.analysis.graph import load_model, tensor_elem_types, with_outputs
from ocrquant.analysis.simulate.engine import SimReport, Simulator
from ocrquant.analysis.simulate.qtypes import quantize_linear

RUNTIME_MODES = {
    # the QDQ graph executed as written: DQ -> float op -> Q, i.e. the exact semantics of the file
    "ort-reference": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    # what a CPU deployment runs: Q/DQ fused into QLinearConv & co. with their own rounding
    "ort-optimized": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass
class OutputAgreement:
    name: str
    runtime: str
    cosine: float
    snr_db: float
    max_abs: float
    int_match_rate: float | None  # None when the output is not a dequantized integer tensor
    numel: int


def runtime_session(model_path: str | Path | bytes, mode: str, threads: int = 0) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = RUNTIME_MODES[mode]
    if threads:
        so.intra_op_num_threads = threads
    model = model_path if isinstance(model_path, bytes) else str(model_path)
    return ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])


def compare_with_runtime(
    model_path: str | Path,
    inputs: Sequence[np.ndarray],
    *,
    rounding: str = "half_away",
    requant: str = "fixed",
    threads: int = 0,
    progress: bool = True,
) -> tuple[list[OutputAgreement], SimReport]:
    """Run the simulator and onnxruntime (both modes of ``RUNTIME_MODES``) on every input and summarise
    their agreement per output. A fragile model (the 2-class cls softmax) can differ more between
    onnxruntime's two modes than between the simulator and the reference mode: both are reported."""
    sim = Simulator(model_path, rounding=rounding, requant=requant)
    sessions = {mode: runtime_session(model_path, mode, threads) for mode in RUNTIME_MODES}
    first = next(iter(sessions.values()))
    in_name = first.get_inputs()[0].name
    names = [o.name for o in first.get_outputs()]
    baseline = "ort-optimized vs ort-reference"  # how far onnxruntime's own two modes are apart
    stats = {(m, n): ErrorStats() for m in [*sessions, baseline] for n in names}
    same = {(m, n): [0, 0] for m in [*sessions, baseline] for n in names}
    for x in tqdm(inputs, desc="simulate", disable=not progress, unit="input"):
        got = sim.run({in_name: x})
        refs = {m: dict(zip(names, s.run(names, {in_name: x}), strict=True)) for m, s in sessions.items()}
        for n in names:
            stats[baseline, n].update(refs["ort-reference"][n], refs["ort-optimized"][n])
            if n in sim.int_outputs:
                p = sim.int_outputs[n].params
                a, b = (
                    quantize_linear(refs["ort-reference"][n], p),
                    quantize_linear(refs["ort-optimized"][n], p),
                )
                same[baseline, n][0] += int(np.count_nonzero(a == b))
                same[baseline, n][1] += a.size
        for mode, ref in refs.items():
            for n in names:
                stats[mode, n].update(ref[n], got[n])
                if n in sim.int_outputs:
                    q = sim.int_outputs[n]
                    same[mode, n][0] += int(np.count_nonzero(quantize_linear(ref[n], q.params) == q.q))
                    same[mode, n][1] += q.q.size
    rows = [
        OutputAgreement(
            n, m, s.cosine, s.snr_db, s.max_abs, same[m, n][0] / same[m, n][1] if same[m, n][1] else None, s.n
        )
        for (m, n), s in stats.items()
    ]
    return rows, sim.report


@dataclass
class KernelAgreement:
    op_type: str
    nodes: int
    exact_rate: float
    max_diff: int
    numel: int


def kernel_agreement(
    model_path: str | Path,
    inputs: Sequence[np.ndarray],
    *,
    rounding: str = "half_away",
    requant: str = "fixed",
    runtime: str = "ort-reference",
    progress: bool = True,
) -> list[KernelAgreement]:
    """Per op type: how often each integer kernel reproduces onnxruntime's integers when fed exactly
    onnxruntime's inputs (teacher forcing, see ``Simulator.run``). This separates kernel differences
    (rounding ties, float32 noise) from their amplification downstream. ``runtime``: a key of
    ``RUNTIME_MODES``; with "ort-optimized" the QuantizeLinear outputs are exposed as graph outputs,
    which leaves onnxruntime's QLinear* fusions in place (checked on the PP-OCRv3 det model)."""

    model = load_model(model_path)
    q_names = [n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    exposed = with_outputs(model, q_names, tensor_elem_types(model)).SerializeToString()
    session = runtime_session(exposed, runtime)
    sim = Simulator(model, rounding=rounding, requant=requant)
    in_name = session.get_inputs()[0].name
    acc: dict[str, list[int]] = {}
    for x in tqdm(inputs, desc="per-kernel agreement", disable=not progress, unit="input"):
        ref = dict(zip(q_names, session.run(q_names, {in_name: x}), strict=True))
        sim.run({in_name: x}, reference=ref)
        for r in sim.report.nodes:
            if r.mode == "integer" and r.total:
                a = acc.setdefault(r.op_type, [0, 0, 0, 0])
                a[0], a[1], a[2] = a[0] + r.exact, a[1] + r.total, max(a[2], r.max_diff)
                a[3] += 1
    rows = [KernelAgreement(op, a[3] // len(inputs), a[0] / a[1], a[2], a[1]) for op, a in acc.items()]
    return sorted(rows, key=lambda r: r.exact_rate)
