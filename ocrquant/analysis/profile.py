"""Per-layer profile: onnxruntime's own profiler for time, shapes for MACs and parameters.

Time comes from the profiler's JSON trace (``SessionOptions.enable_profiling``): every event of
category "Node" carries the node name, ``args.op_name`` and ``dur`` (microseconds). Warm-up runs
are excluded by keeping only node events inside the last ``runs`` "model_run" windows. MACs and
parameters are computed from the graph (Conv, ConvTranspose, MatMul, Gemm) after shape inference
at the actual input shape; fused nodes of an optimized session are joined back by name.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ocrquant.analysis.graph import GraphView, load_model
from ocrquant.fileio import scratch_dir
from ocrquant.quantization.graph import is_quantized
from ocrquant.quantization.prepare import denormal_weights
from ocrquant.quantization.qdq_passes import CHANNEL_ALIGN, slow_depthwise
from ocrquant.runtime.base import RuntimeOptions
from ocrquant.runtime.openvino import OpenVinoRunner  # imports openvino: only when asked for

QDQ_TIME_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
_OPT = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass
class NodeTime:
    name: str
    op_type: str
    ms: float  # mean per run
    share: float
    macs: int | None = None
    params: int | None = None
    #: the precision the layer ran in, where the runtime says (OpenVINO's kernel name: i8, u8, f32, bf16)
    precision: str | None = None
    kernel: str | None = None


@dataclass
class ProfileResult:
    model: str
    runs: int
    total_ms: float
    nodes: list[NodeTime]
    by_op: list[tuple[str, int, float, float]]  # op type, node count, ms per run, share
    qdq_share: float
    total_macs: int
    total_params: int
    settings: dict = field(default_factory=dict)
    hints: list[str] = field(default_factory=list)  # why some kernels may be slow


def layer_costs(model: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> dict[str, tuple[int, int]]:
    """node name (and output name) -> (MACs, parameters) of Conv / ConvTranspose / MatMul / Gemm."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for inp in m.graph.input:
        if inp.name in input_shapes:
            dims = inp.type.tensor_type.shape.dim
            for d, v in zip(dims, input_shapes[inp.name], strict=False):
                d.ClearField("dim_param")
                d.dim_value = int(v)
    try:
        m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception:  # shapes are best effort; unknown ones give no MAC count
        pass
    shapes: dict[str, list[int]] = {}
    for vi in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input):
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    view = GraphView(m)
    for t in m.graph.initializer:
        shapes[t.name] = list(t.dims)

    def weight_shape(name: str) -> list[int]:
        prod = view.producer.get(name)
        src = prod.input[0] if prod is not None and prod.op_type == "DequantizeLinear" else name
        return shapes.get(src) or shapes.get(name) or []

    costs: dict[str, tuple[int, int]] = {}
    for node in m.graph.node:
        out = shapes.get(node.output[0]) if node.output else None
        if node.op_type not in ("Conv", "ConvTranspose", "MatMul", "Gemm") or not out or 0 in out:
            continue
        w = weight_shape(node.input[1])
        params = int(np.prod(w)) if w and view.is_constant(node.input[1]) else 0
        if len(node.input) > 2 and node.input[2]:
            params += int(np.prod(weight_shape(node.input[2]) or [0]))
        if not w or 0 in w:
            continue
        if node.op_type == "Conv":
            macs = int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type == "ConvTranspose":
            x = shapes.get(node.input[0]) or []
            macs = int(np.prod(x)) * int(np.prod(w[1:])) if x and 0 not in x else 0
        else:  # MatMul / Gemm: every output element is a K-long dot product
            a = shapes.get(node.input[0]) or []
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            k = (a[-2] if trans_a else a[-1]) if a else 0
            macs = int(np.prod(out)) * int(k)
        costs[node.name or node.output[0]] = (macs, params)
        costs.setdefault(node.output[0], (macs, params))  # optimized sessions name fused nodes by output
    return costs


def _base_name(name: str) -> str:
    """Fused nodes keep their source name plus a suffix ("conv1_quant", "Conv_3_token_12")."""
    return re.sub(r"(_quant|_token_\d+|_nchwc|_fused.*|_kernel_time)$", "", name)


def profile_model(
    model_path: str | Path,
    inputs: Sequence[np.ndarray],
    *,
    runs: int | None = None,
    warmup: int = 1,
    threads: int = 0,
    optimization: str = "all",
) -> ProfileResult:
    """Profile ``model_path`` over ``inputs`` (cycled to ``runs`` timed runs after ``warmup`` runs)."""
    model = load_model(model_path)
    runs = runs or len(inputs)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = _OPT[optimization]
    if threads:
        so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    with scratch_dir("profile") as tmp:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "ocrquant_profile")
        session = ort.InferenceSession(str(model_path), sess_options=so, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for i in range(warmup + runs):
            session.run(None, {name: inputs[i % len(inputs)]})
        trace = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
    events = trace if isinstance(trace, list) else trace.get("traceEvents", [])
    windows = sorted(
        (e["ts"], e["ts"] + e["dur"])
        for e in events
        if e.get("cat") == "Session" and e.get("name") == "model_run"
    )[-runs:]
    per_node: dict[str, list] = defaultdict(lambda: ["", "", 0.0])
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        if windows and not any(lo <= e["ts"] <= hi for lo, hi in windows):
            continue
        node = e["name"][: -len("_kernel_time")]
        per_node[node][0] = e.get("args", {}).get("op_name", "")
        per_node[node][2] += float(e["dur"]) / 1000.0
    settings = {"optimization": optimization, "threads": threads, "warmup": warmup}
    result = _result(model_path, model, per_node, runs, {name: list(inputs[0].shape)}, settings)
    result.hints = kernel_hints(model)
    return result


def _result(
    model_path: str | Path,
    model: onnx.ModelProto,
    per_node: dict[str, list],
    runs: int,
    input_shapes: dict[str, list[int]],
    settings: dict,
) -> ProfileResult:
    """The profile from per-node ``[op type, kernel, total ms over runs]``: each node's mean time and
    share, MACs and parameters joined by name, per-op-type totals, the Q/DQ share."""
    costs = layer_costs(model, input_shapes)
    total = sum(v[2] for v in per_node.values()) / runs or 1e-12
    nodes = []
    for node, (op, kernel, ms) in per_node.items():
        cost = costs.get(node) or costs.get(_base_name(node))
        nodes.append(
            NodeTime(
                node,
                op,
                ms / runs,
                ms / runs / total,
                *(cost if cost else (None, None)),
                precision=_precision(kernel) if kernel else None,
                kernel=kernel or None,
            )  # fmt: skip
        )
    nodes.sort(key=lambda n: -n.ms)
    agg: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for n in nodes:
        agg[n.op_type][0] += 1
        agg[n.op_type][1] += n.ms
    by_op = sorted(((op, c, ms, ms / total) for op, (c, ms) in agg.items()), key=lambda r: -r[2])
    qdq = sum(ms for op, _, ms, _ in by_op if op in ("FakeQuantize", *QDQ_TIME_OPS)) / total
    unique = {k: costs[k] for k in (n.name or n.output[0] for n in model.graph.node) if k in costs}
    return ProfileResult(
        str(model_path), runs, total, nodes, by_op, qdq,
        sum(c[0] for c in unique.values()), sum(c[1] for c in unique.values()), settings,
    )  # fmt: skip


def _precision(exec_type: str) -> str | None:
    """``jit_avx512_I8`` -> ``i8``; ``brgconv_avx512_FP32`` -> ``f32``; None where the name says none."""
    m = re.search(r"(?:^|_)(I8|U8|FP32|F32|BF16|FP16|F16|I32)$", exec_type, flags=re.IGNORECASE)
    if not m:
        return None
    return {"fp32": "f32", "fp16": "f16"}.get(m.group(1).lower(), m.group(1).lower())


def profile_openvino(
    model_path: str | Path,
    inputs: Sequence[np.ndarray],
    *,
    runs: int | None = None,
    warmup: int = 1,
    threads: int = 0,
    optimization: str = "all",
) -> ProfileResult:
    """Profile ``model_path`` in OpenVINO (CPU plugin, the settings of ocrquant's OpenVINO runner) from
    its per-layer performance counters. OpenVINO fuses the graph its own way, so its layers are its
    nodes (a Conv with its fused activation and requantization is one); each layer's kernel name
    says the precision it ran in, which is what tells whether a QDQ model runs in integers there.
    ``optimization`` is onnxruntime's and is ignored."""

    model = load_model(model_path)
    runs = runs or len(inputs)
    runner = OpenVinoRunner(Path(model_path), RuntimeOptions(threads=threads, profile=True))
    name = runner.input_names[0]
    per_node: dict[str, list] = defaultdict(lambda: ["", "", 0.0])
    for i in range(warmup + runs):
        runner.run({name: inputs[i % len(inputs)]})
        if i < warmup:
            continue
        for info in runner.profiling_info():
            if str(info.status).endswith("NOT_RUN") or str(info.status).endswith("OPTIMIZED_OUT"):
                continue
            entry = per_node[info.node_name]
            entry[0], entry[1] = info.node_type, info.exec_type
            entry[2] += info.real_time.total_seconds() * 1000.0
    settings = {"backend": "openvino", "threads": threads, "warmup": warmup, "config": runner.config}
    return _result(model_path, model, per_node, runs, {name: list(inputs[0].shape)}, settings)


#: ``ocrquant profile --backend NAME``
PROFILERS = {"onnxruntime": profile_model, "openvino": profile_openvino}


def kernel_hints(model: onnx.ModelProto) -> list[str]:
    """What in a graph keeps onnxruntime's CPU kernels off their fast path (the profile's
    times show the cost, not the cause; these are the causes measured on the zoo models)."""

    hints = []
    denormal = denormal_weights(model)
    if denormal:
        worst = max(denormal, key=denormal.__getitem__)
        hints.append(
            f"{sum(denormal.values())} float weights are denormal (below 1.2e-38; {denormal[worst]} in "
            f"{worst}): an Intel core takes a microcode assist for every multiply with one, so onnxruntime "
            "runs this model slower than it needs to there (PP-OCRv6 small det FP32: 2.89x, python "
            "benchmarks/denormals.py), and a speed-up measured over it includes that; ocrquant's prepare "
            "zeroes them with the same outputs"
        )
    slow = slow_depthwise(model) if is_quantized(model) else []
    if slow:
        widths = sorted({c for _, c in slow})
        hints.append(
            f"{len(slow)} depthwise Conv(s) with channel counts that are not multiples of {CHANNEL_ALIGN} "
            f"({', '.join(map(str, widths))}; e.g. {slow[0][0]}): onnxruntime's x86 int8 Conv runs them on "
            "its generic path, several times slower (PP-OCRv3 cls: 6x FP32's time); ocrquant's ort-cpu "
            "target pads such channel groups (align_channels)"
        )
    return hints
