"""Pair-safe int8 weights against onnxruntime's real fused kernels (QLinearConv / QLinearMatMul).

The fused model (ORT_ENABLE_ALL) must equal the exact integer emulation of the same QDQ model
(ORT_DISABLE_ALL) for the worst uint8 inputs; on a CPU without VNNI the plain int8 scale of the same
weights must not (that is the saturation the pair-safe scale exists for).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ocrquant.quantization.saturation import (
    PAIR_LIMIT,
    pair_safe_scale,
    reduction_major,
    worst_pair_sum,
)
from ocrquant.quantization.targets import cpu_has_vnni


def _qdq_model(w: np.ndarray, scale: np.ndarray, op: str, x_shape: list[int]) -> tuple[bytes, float]:
    """u8 input -> DQ -> op(DQ(int8 weight)) -> Q -> DQ: the pattern ORT fuses into one kernel.
    The output step is wide enough that no exact result clips; it is returned as the tolerance."""
    q = np.clip(np.round(w / (scale.reshape(-1, *[1] * (w.ndim - 1)) if op == "Conv" else scale)), -128, 127)
    step = float(np.abs(reduction_major(q, op)).sum(axis=1).max()) * 255 / 120
    axis = 0 if op == "Conv" else 1
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"]),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wf"], axis=axis),
        helper.make_node(op, ["xf", "wf"], ["y"]),
        helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["out"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(1.0, np.float32), "xs"),
        numpy_helper.from_array(np.array(0, np.uint8), "xz"),
        numpy_helper.from_array(q.astype(np.int8), "w"),
        numpy_helper.from_array(np.ones(scale.shape, np.float32), "ws"),
        numpy_helper.from_array(np.zeros(scale.shape, np.int8), "wz"),
        numpy_helper.from_array(np.array(step, np.float32), "ys"),
        numpy_helper.from_array(np.array(128, np.uint8), "yz"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, x_shape)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString(), step


def _run(model: bytes, x: np.ndarray, level: ort.GraphOptimizationLevel) -> np.ndarray:
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _fused_matches_exact(model_and_step: tuple[bytes, float], x: np.ndarray) -> bool:
    model, step = model_and_step
    fused = _run(model, x, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    exact = _run(model, x, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return bool(np.abs(fused - exact).max() <= step * 1.01)  # at most one output step


def test_reduction_order_is_kh_kw_cin():
    w = np.arange(2 * 3 * 2 * 2).reshape(2, 3, 2, 2)
    m = reduction_major(w, "Conv")
    assert m.shape == (2, 12)
    assert list(m[0, :3]) == [w[0, 0, 0, 0], w[0, 1, 0, 0], w[0, 2, 0, 0]]


def test_pair_safe_scale_bounds_every_pair():
    rng = np.random.default_rng(0)
    for op, shape in (("Conv", (16, 7, 3, 3)), ("Conv", (32, 16, 1, 1)), ("MatMul", (64, 24))):
        w = rng.standard_normal(shape)
        channel_axis = 0 if op == "Conv" else 1
        spread = rng.uniform(0.01, 3.0, size=shape[channel_axis])  # channels of very different size
        w *= spread.reshape([-1 if i == channel_axis else 1 for i in range(len(shape))])
        scale = pair_safe_scale(w, op)
        q = np.round(w / (scale.reshape(-1, 1, 1, 1) if op == "Conv" else scale))
        assert np.abs(q).max() <= 127
        assert worst_pair_sum(q, op) <= PAIR_LIMIT
        # never coarser than the 7-bit grid, never finer than 8-bit absmax
        absmax = np.abs(reduction_major(w, op)).max(axis=1)
        assert np.all(scale >= absmax / 127 * (1 - 1e-6))
        assert np.all(scale <= absmax / 63.5 * (1 + 1e-6))


def test_pair_safe_conv_matches_exact_integer_result():
    rng = np.random.default_rng(1)
    for cin, k in ((6, 3), (5, 3), (16, 1)):
        w = np.abs(rng.standard_normal((8, cin, k, k)))  # all positive: the worst case for pairs
        x = rng.integers(200, 256, size=(1, cin, 7, 7), dtype=np.uint8)
        assert _fused_matches_exact(_qdq_model(w, pair_safe_scale(w, "Conv"), "Conv", [1, cin, 7, 7]), x)


@pytest.mark.skipif(cpu_has_vnni(), reason="VNNI kernels do not saturate: the layout cannot be seen")
@pytest.mark.parametrize(
    ("cin", "first", "second"),
    # (input channel, tap) of two weights of 127; they saturate iff their (kh, kw, cin) indices pair up
    [(3, (0, 0), (1, 0)), (3, (1, 0), (2, 0)), (3, (2, 0), (0, 1)), (2, (0, 0), (0, 1)), (8, (6, 0), (7, 0))],
)
def test_pair_layout_is_the_kernels(cin, first, second):
    w = np.zeros((1, cin, 3, 3))
    for c, tap in (first, second):
        w[0, c, tap // 3, tap % 3] = 1.0
    k = [tap * cin + c for c, tap in (first, second)]
    predicted_pair = k[0] // 2 == k[1] // 2
    scale = np.array([1.0 / 127], np.float32)  # plain int8: both weights at 127
    x = np.full((1, cin, 3, 3), 255, np.uint8)
    assert _fused_matches_exact(_qdq_model(w, scale, "Conv", [1, cin, 3, 3]), x) != predicted_pair
    assert worst_pair_sum(np.round(w * 127), "Conv") == (254 if predicted_pair else 127)


def test_pair_safe_matmul_matches_exact_integer_result():
    rng = np.random.default_rng(2)
    w = np.abs(rng.standard_normal((32, 16)))  # all positive: the worst case for pairs
    x = np.full((4, 32), 255, np.uint8)
    assert _fused_matches_exact(_qdq_model(w, pair_safe_scale(w, "MatMul"), "MatMul", [4, 32]), x)


@pytest.mark.skipif(cpu_has_vnni(), reason="VNNI kernels do not saturate: nothing to show")
def test_plain_int8_scale_saturates_without_vnni():
    """The control: the same layer with absmax/127 scales is wrong in the fused kernel here."""
    rng = np.random.default_rng(3)
    w = np.abs(rng.standard_normal((8, 6, 1, 1)))
    scale = (np.abs(w).reshape(8, -1).max(axis=1) / 127).astype(np.float32)
    x = np.full((1, 6, 4, 4), 255, np.uint8)
    assert not _fused_matches_exact(_qdq_model(w, scale, "Conv", [1, 6, 4, 4]), x)
    assert _fused_matches_exact(_qdq_model(w, pair_safe_scale(w, "Conv"), "Conv", [1, 6, 4, 4]), x)


def test_writer_uses_pair_safe_scales(tmp_path):
    """A profile with int8p weights writes pair-safe per-channel scales into the QDQ model."""
    import dataclasses

    from ocrquant.quantization.qdq import QuantPlan, write_qdq_model
    from ocrquant.quantization.targets import get_target

    rng = np.random.default_rng(4)
    w = np.abs(rng.standard_normal((8, 6, 3, 3))).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], name="conv")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    profile = dataclasses.replace(get_target("ort-cpu"), weight_dtype="int8p", narrow_weight_scope="dense")
    plan = QuantPlan(profile=profile, ranges={"x": (0.0, 4.0), "y": (-20.0, 60.0)})
    out = tmp_path / "q.onnx"
    write_qdq_model(model, plan, out)
    q = onnx.load(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    qw = next(v for v in inits.values() if v.dtype == np.int8 and v.shape == w.shape)
    assert worst_pair_sum(qw, "Conv") <= PAIR_LIMIT
    assert np.abs(qw).max() > 63  # more than the 7-bit grid
