"""Integer simulator: fixed-point arithmetic, each kernel against a float reference, and a hand-built
QDQ model simulated against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ocrquant.analysis.simulate import KERNELS, QParams, QTensor, Simulator, quantize_multiplier, requantize
from ocrquant.analysis.simulate.executor import SingleNodeExecutor
from ocrquant.analysis.simulate.fixedpoint import (
    multiply_by_quantized_multiplier,
    rounding_divide,
    rounding_shift_right,
)
from ocrquant.analysis.simulate.qtypes import quantize_linear
from ocrquant.analysis.simulate.registry import KernelContext

RNG = np.random.default_rng(0)
OPSET = [helper.make_opsetid("", 13)]


# ---------------------------------------------------------------- fixed point
def test_quantize_multiplier_range_and_accuracy():
    m = np.concatenate([RNG.uniform(1e-6, 4.0, 500), [2.0**-7, 1.0, 0.5, 0.999999999]])
    m0, exp = quantize_multiplier(m)
    assert np.all((m0 >= 2**30) & (m0 < 2**31))
    np.testing.assert_allclose(m0 * np.exp2(exp - 31.0), m, rtol=2.0**-30)
    assert quantize_multiplier(0.0)[0] == 0
    m0, exp = quantize_multiplier(2.0**-7)
    assert m0 == 2**30 and exp == -6  # a power of two: M0 = 2^30, i.e. a pure shift


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("half_away", [3, -3, 3, -3, 4, -4, 0]),
        ("half_up", [3, -2, 3, -3, 4, -3, 0]),
        ("half_even", [2, -2, 3, -3, 4, -4, 0]),
    ],
)
def test_rounding_shift_ties(mode, expected):
    x = np.array([5, -5, 6, -6, 7, -7, 0])  # / 2 -> 2.5, -2.5, 3, -3, 3.5, -3.5, 0
    assert rounding_shift_right(x, 1, mode).tolist() == expected
    assert rounding_shift_right(x, 0, mode).tolist() == x.tolist()
    assert rounding_shift_right(x, -2, mode).tolist() == (x * 4).tolist()


def test_requantize_matches_float_and_saturates():
    acc = RNG.integers(-(2**20), 2**20, 20000)
    m = 0.0123456
    got = requantize(acc, m, 3, np.int8)
    real = acc * m
    ref = np.clip(np.sign(real) * np.floor(np.abs(real) + 0.5) + 3, -128, 127)
    not_tie = np.abs(np.abs(real - np.trunc(real)) - 0.5) > 1e-6
    assert np.array_equal(got[not_tie], ref[not_tie])
    assert got.min() == -128 and got.max() == 127  # clamps, no wrap-around
    # exactly .5 after scaling: half away from zero, both signs
    assert requantize(np.array([1, -1, 3, -3]), 0.5, 0, np.int8).tolist() == [1, -1, 2, -2]
    assert requantize(np.array([1, -1]), 0.5, 0, np.int8, mode="half_up").tolist() == [1, 0]


def test_float32_requantization_is_mlas_arithmetic():
    """--requant float32: float32 product, ties to even, then zero point and saturation; it differs
    from the fixed-point path only where float32 rounding of the product crosses a half step."""
    from ocrquant.analysis.simulate.fixedpoint import requantize_float32

    assert requantize_float32(np.array([1, 3, 5, -1, -3]), 0.5, 0, np.int8).tolist() == [0, 2, 2, 0, -2]
    assert requantize_float32(np.array([1000, -1000]), 1.0, 10, np.uint8).tolist() == [255, 0]
    acc = RNG.integers(-(2**20), 2**20, 20000)
    m = np.float32(0.0123456)
    want = np.clip(np.rint(acc.astype(np.float32) * m).astype(np.int64) + 3, -128, 127)
    assert np.array_equal(requantize_float32(acc, m, 3, np.int8), want)
    fixed = requantize(acc, float(m), 3, np.int8, mode="half_even")
    assert np.mean(fixed != want) < 1e-3 and np.abs(fixed.astype(int) - want).max() <= 1


def test_rounding_divide_ties():
    num = np.array([5, -5, 7, 9, 3])
    assert rounding_divide(num, 2, "half_away").tolist() == [3, -3, 4, 5, 2]
    assert rounding_divide(num, 2, "half_even").tolist() == [2, -2, 4, 4, 2]
    assert rounding_divide(num, 2, "half_up").tolist() == [3, -2, 4, 5, 2]
    assert rounding_divide(np.array([10, 11]), 3).tolist() == [3, 4]


def test_pow2_shift_path_equals_multiplier_path():
    acc = RNG.integers(-(2**30), 2**30, 5000)
    for m in (2.0**-3, 2.0**-12, 2.0**-20):
        m0, exp = quantize_multiplier(m)
        shift = multiply_by_quantized_multiplier(acc, m0, exp, "half_away")
        general = rounding_shift_right(acc * m0, 31 - exp, "half_away")
        assert np.array_equal(shift, general)


# ---------------------------------------------------------------- kernels vs float references
def _qt(shape, scale, zp=0, dtype=np.int8, axis=None, rng=RNG):
    info = np.iinfo(dtype)
    q = rng.integers(info.min, info.max + 1, shape).astype(dtype)
    scale = np.asarray(scale, dtype=np.float32)
    return QTensor(q, QParams(scale, np.full(scale.shape, zp, dtype=dtype), np.dtype(dtype), axis))


def _ctx(node, rounding="half_away"):
    return KernelContext(node, rounding, SingleNodeExecutor(OPSET).run, {})


def _naive_conv(x, w, stride, pad, dil, group):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho = (h + 2 * pad - dil * (kh - 1) - 1) // stride + 1
    wo = (wd + 2 * pad - dil * (kw - 1) - 1) // stride + 1
    out = np.zeros((n, o, ho, wo))
    og = o // group
    for oc in range(o):
        g = oc // og
        for i in range(ho):
            for j in range(wo):
                patch = xp[
                    :,
                    g * cg : (g + 1) * cg,
                    i * stride : i * stride + dil * (kh - 1) + 1 : dil,
                    j * stride : j * stride + dil * (kw - 1) + 1 : dil,
                ]
                out[:, oc, i, j] = (patch * w[oc]).sum(axis=(1, 2, 3))
    return out


@pytest.mark.parametrize(
    ("cin", "cout", "group", "stride", "pad", "dil"),
    [(3, 8, 1, 1, 1, 1), (8, 8, 8, 2, 1, 1), (8, 16, 8, 1, 1, 1), (8, 4, 2, 1, 2, 2)],
    ids=["plain", "depthwise-s2", "depthwise-mult2", "grouped-dilated"],
)
def test_conv_kernel_vs_float(cin, cout, group, stride, pad, dil):
    x = _qt((2, cin, 9, 9), 0.05, zp=-7)
    w = _qt((cout, cin // group, 3, 3), RNG.uniform(0.002, 0.02, cout), axis=0)
    b = QTensor(
        RNG.integers(-5000, 5000, cout).astype(np.int32),
        QParams((0.05 * w.params.scale).astype(np.float32), np.zeros(cout, np.int32), np.dtype(np.int32), 0),
    )
    out = QParams(np.array(0.11, np.float32), np.array(4, np.int8), np.dtype(np.int8))
    node = helper.make_node(
        "Conv", ["x", "w", "b"], ["y"], group=group, strides=[stride] * 2, pads=[pad] * 4, dilations=[dil] * 2
    )
    got = KERNELS["Conv"].fn(_ctx(node), [x, w, b], out)
    acc = _naive_conv(
        x.centered().astype(np.float64), w.centered().astype(np.float64), stride, pad, dil, group
    )
    real = (acc + b.q[None, :, None, None]) * (0.05 * w.params.scale.astype(np.float64))[None, :, None, None]
    ref = np.clip(np.round(real / 0.11 + 1e-9 * np.sign(real)) + 4, -128, 127)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1 and np.mean(got == ref) > 0.999


def test_conv_int32_accumulation_exact_and_saturating():
    k = 256
    x = QTensor(
        np.full((1, k, 3, 3), -128, np.int8),
        QParams(np.array(1.0, np.float32), np.array(0, np.int8), np.dtype(np.int8)),
    )
    w = QTensor(
        np.full((1, k, 3, 3), -128, np.int8),
        QParams(np.array(1.0, np.float32), np.array(0, np.int8), np.dtype(np.int8)),
    )
    out = QParams(np.array(2.0**20, np.float32), np.array(0, np.int16), np.dtype(np.int16))
    node = helper.make_node("Conv", ["x", "w"], ["y"])
    ctx = _ctx(node)
    got = KERNELS["Conv"].fn(ctx, [x, w], out)
    assert int(got.ravel()[0]) == round(128 * 128 * 9 * k / 2**20)  # 37.7M: exact, fits int32
    assert ctx.overflows == 0
    big = QTensor(np.full((1, 140_000, 1, 1), -128, np.int8), x.params)  # 128*128*140000 = 2.29e9 > 2^31
    ctx = _ctx(node)
    y = KERNELS["Conv"].fn(ctx, [big, big], out)
    assert ctx.overflows == 1  # the accumulator saturates (no wrap-around) and says so
    assert int(y.ravel()[0]) == round((2**31 - 1) / 2**20)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul"])
def test_eltwise_kernels_vs_float(op):
    a, b = _qt((4, 8, 5, 5), 0.037, zp=3), _qt((1, 8, 1, 5), 0.061, zp=-20)
    out = QParams(
        np.array(0.09 if op != "Mul" else 2.3, np.float32), np.array(-5, np.int8), np.dtype(np.int8)
    )
    got = KERNELS[op].fn(_ctx(helper.make_node(op, ["a", "b"], ["y"])), [a, b], out)
    fa, fb = a.dequantize().astype(np.float64), b.dequantize().astype(np.float64)
    real = {"Add": fa + fb, "Sub": fa - fb, "Mul": fa * fb}[op]
    ref = np.clip(np.round(real / float(out.scale)) + int(out.zero_point), -128, 127)
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1 and np.mean(got == ref) > 0.995


def test_concat_rescales_inputs():
    a, b = _qt((1, 2, 3, 3), 0.05, zp=1), _qt((1, 3, 3, 3), 0.08, zp=-3)
    out = QParams(np.array(0.08, np.float32), np.array(-3, np.int8), np.dtype(np.int8))
    got = KERNELS["Concat"].fn(_ctx(helper.make_node("Concat", ["a", "b"], ["y"], axis=1)), [a, b], out)
    assert np.array_equal(got[:, 2:], b.q)  # same parameters: copied untouched
    ref = np.clip(np.round(a.dequantize() / 0.08) - 3, -128, 127)
    assert np.abs(got[:, :2] - ref).max() <= 1


def test_average_pools_vs_float():
    x = _qt((1, 4, 6, 7), 0.05, zp=10)
    out = QParams(np.array(0.03, np.float32), np.array(0, np.int8), np.dtype(np.int8))
    g = KERNELS["GlobalAveragePool"].fn(_ctx(helper.make_node("GlobalAveragePool", ["x"], ["y"])), [x], out)
    ref = np.clip(
        np.round(x.dequantize().astype(np.float64).mean(axis=(2, 3), keepdims=True) / 0.03), -128, 127
    )
    assert np.abs(g - ref).max() <= 1
    node = helper.make_node(
        "AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
    )
    a = KERNELS["AveragePool"].fn(_ctx(node), [x], out)
    ref_f = SingleNodeExecutor(OPSET).run(node, [x.dequantize()])[0]
    assert np.abs(a - quantize_linear(ref_f, out).astype(int)).max() <= 1


def test_pow2_average_pool_divides_exactly():
    x = _qt((1, 3, 6, 6), 2.0**-4, zp=0)
    out = QParams(np.array(2.0**-5, np.float32), np.array(0, np.int8), np.dtype(np.int8))
    node = helper.make_node("GlobalAveragePool", ["x"], ["y"])
    ctx = _ctx(node, "half_even")
    got = KERNELS["GlobalAveragePool"].fn(ctx, [x], out)
    ref = SingleNodeExecutor(OPSET).run(node, [x.dequantize()])[0]
    assert np.array_equal(got, quantize_linear(ref, out)) and "exact divide" in ctx.notes[0]


def test_lookup_table_is_exact_and_clamp_is_integer():
    x = _qt((2, 3, 4, 4), 0.07, zp=-2)
    out = QParams(np.array(1 / 255, np.float32), np.array(-128, np.int8), np.dtype(np.int8))
    node = helper.make_node("Sigmoid", ["x"], ["y"])
    got = KERNELS["Sigmoid"].fn(_ctx(node), [x], out)
    ref = quantize_linear(SingleNodeExecutor(OPSET).run(node, [x.dequantize()])[0], out)
    assert np.array_equal(got, ref)
    ctx = _ctx(helper.make_node("Clip", ["x", "lo", "hi"], ["y"]))
    clip = KERNELS["Clip"].fn(ctx, [x, np.array(0.0, np.float32), np.array(6.0, np.float32)], x.params)
    ref = quantize_linear(np.clip(x.dequantize(), 0, 6), x.params)
    assert np.array_equal(clip, ref) and "integer clamp" in ctx.notes


def test_softmax_kernel_vs_float():
    x = _qt((3, 40, 30), 0.1, zp=0)
    out = QParams(np.array(1 / 256, np.float32), np.array(-128, np.int8), np.dtype(np.int8))
    got = KERNELS["Softmax"].fn(_ctx(helper.make_node("Softmax", ["x"], ["y"], axis=-1)), [x], out)
    f = x.dequantize().astype(np.float64)
    p = np.exp(f - f.max(-1, keepdims=True))
    ref = quantize_linear((p / p.sum(-1, keepdims=True)).astype(np.float32), out)
    assert np.abs(got.astype(int) - ref).max() <= 1


@pytest.mark.parametrize("ctm", ["half_pixel", "asymmetric", "align_corners"])
def test_bilinear_resize_vs_float(ctm):
    x = _qt((1, 2, 5, 6), 0.04, zp=5)
    node = helper.make_node(
        "Resize", ["x", "", "scales"], ["y"], mode="linear", coordinate_transformation_mode=ctm
    )
    scales = np.array([1, 1, 2, 2], np.float32)
    got = KERNELS["Resize"].fn(_ctx(node), [x, None, scales], x.params)
    ref = SingleNodeExecutor(OPSET).run(node, [x.dequantize(), None, scales])[0]
    assert got.shape == ref.shape
    assert np.abs(got.astype(int) - quantize_linear(ref, x.params)).max() <= 1


# ---------------------------------------------------------------- a hand-built QDQ model vs onnxruntime
def _qdq_model(pow2: bool = False) -> onnx.ModelProto:
    """x -> Q/DQ -> Conv(+bias) -> Q/DQ -> {MaxPool, Conv dw} -> Add -> Q/DQ -> Sigmoid -> Q/DQ -> GAP."""
    rng = np.random.default_rng(1)

    def s(v):
        return float(2.0 ** np.round(np.log2(v))) if pow2 else v

    inits, nodes = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def qdq(x, name, scale, zp=0):
        const(f"{name}_s", np.float32(scale))
        const(f"{name}_z", np.int8(zp))
        nodes.append(helper.make_node("QuantizeLinear", [x, f"{name}_s", f"{name}_z"], [f"{name}_q"]))
        nodes.append(
            helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_dq"])
        )
        return f"{name}_dq"

    def weight(name, shape, in_scale):
        w = rng.integers(-127, 128, shape).astype(np.int8)
        ws = np.array([s(v) for v in rng.uniform(0.003, 0.02, shape[0])], np.float32)
        const(f"{name}_w", w)
        const(f"{name}_ws", ws)
        const(f"{name}_wz", np.zeros(shape[0], np.int8))
        nodes.append(
            helper.make_node(
                "DequantizeLinear", [f"{name}_w", f"{name}_ws", f"{name}_wz"], [f"{name}_wdq"], axis=0
            )
        )
        const(f"{name}_b", rng.integers(-3000, 3000, shape[0]).astype(np.int32))
        const(f"{name}_bs", (ws * np.float32(in_scale)).astype(np.float32))
        const(f"{name}_bz", np.zeros(shape[0], np.int32))
        nodes.append(
            helper.make_node(
                "DequantizeLinear", [f"{name}_b", f"{name}_bs", f"{name}_bz"], [f"{name}_bdq"], axis=0
            )
        )
        return f"{name}_wdq", f"{name}_bdq"

    sx, s1, s2, s3, s4 = s(0.0213), s(0.0571), s(0.0779), s(1 / 255), s(0.00317)
    x = qdq("x", "in", sx, 3)
    w, b = weight("c1", (8, 3, 3, 3), sx)
    nodes.append(helper.make_node("Conv", [x, w, b], ["c1"], pads=[1, 1, 1, 1]))
    c1 = qdq("c1", "c1o", s1, -4)
    nodes.append(helper.make_node("MaxPool", [c1], ["mp"], kernel_shape=[2, 2], strides=[2, 2]))
    mp = qdq("mp", "mpo", s1, -4)
    w2, b2 = weight("c2", (8, 1, 3, 3), s1)
    nodes.append(helper.make_node("Conv", [c1, w2, b2], ["c2"], group=8, strides=[2, 2], pads=[1, 1, 1, 1]))
    c2 = qdq("c2", "c2o", s2, 6)
    nodes.append(helper.make_node("Add", [mp, c2], ["add"]))
    add = qdq("add", "addo", s2, 0)
    nodes.append(helper.make_node("Sigmoid", [add], ["sig"]))
    sig = qdq("sig", "sigo", s3, -128)
    nodes.append(helper.make_node("GlobalAveragePool", [sig], ["gap"]))
    nodes.append(helper.make_node("QuantizeLinear", ["gap", "out_s", "out_z"], ["gap_q"]))
    nodes.append(helper.make_node("DequantizeLinear", ["gap_q", "out_s", "out_z"], ["y"]))
    const("out_s", np.float32(s4))
    const("out_z", np.int8(-100))
    graph = helper.make_graph(
        nodes,
        "tiny_qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 1, 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("pow2", [False, True], ids=["float-scales", "pow2-scales"])
def test_hand_built_qdq_model_matches_onnxruntime(pow2):
    model = _qdq_model(pow2)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    sim = Simulator(model, rounding="half_even")
    rng = np.random.default_rng(2)
    for _ in range(3):
        x = rng.normal(0, 1.2, (1, 3, 12, 12)).astype(np.float32)
        ref = session.run(None, {"x": x})[0]
        got = sim.run({"x": x})["y"]
        assert np.array_equal(sim.int_outputs["y"].q, quantize_linear(ref, sim.int_outputs["y"].params))
        np.testing.assert_array_equal(got, ref)
    modes = {r.op_type: r.mode for r in sim.report.nodes}
    assert set(modes.values()) == {"integer"}, sim.report.nodes
    details = " ".join(r.detail for r in sim.report.nodes if r.op_type == "Conv")
    assert ("requant: shift" in details) == pow2


def test_already_quantized_input_is_fed_after_the_input_quantizer():
    sim = Simulator(_qdq_model())
    x = np.random.default_rng(3).normal(0, 1, (1, 3, 12, 12)).astype(np.float32)
    ref = sim.run({"x": x})["y"]
    q_name, params = sim.input_quantizer()
    got = sim.run({"x": np.zeros_like(x), q_name: quantize_linear(x, params)})["y"]
    np.testing.assert_array_equal(got, ref)


def test_fallback_is_reported_with_reason():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xdq"]),
        helper.make_node("ReduceMean", ["xdq"], ["y"], keepdims=1),
    ]
    inits = [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.int8(0), "z")]
    model = helper.make_model(helper.make_graph(nodes, "fb", [x], [y], inits), opset_imports=OPSET)
    model.ir_version = 8
    sim = Simulator(model)
    out = sim.run({"x": np.array([[0.1, 0.2, 0.3, 0.44]], np.float32)})["y"]
    np.testing.assert_allclose(out, [[0.25]], atol=1e-6)
    (report,) = sim.report.nodes
    assert report.mode == "float" and "no integer kernel" in report.detail
    assert sim.report.by_op()[0][:3] == ("ReduceMean", 0, 1)


# ------------------------------------------------- --requant float32: onnxruntime's fused kernels
def _fused_session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _u8_model(nodes, inputs, inits, out="yq") -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info(out, TensorProto.UINT8, None)], inits
    )
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    return model


def test_float32_add_is_onnxruntime_qlinearadd_bit_for_bit():
    """Every uint8 pair, with the scales of a real det residual Add (where the fixed-point add and
    other float orders differ from onnxruntime in a few ties)."""
    sa, za, sb, zb, sc, zc = 0.16653126, 125, 0.13157283, 109, 0.17924328, 119
    inits = [
        numpy_helper.from_array(np.array(v, dt), n)
        for v, dt, n in [
            (sa, np.float32, "sa"), (za, np.uint8, "za"), (sb, np.float32, "sb"),
            (zb, np.uint8, "zb"), (sc, np.float32, "sc"), (zc, np.uint8, "zc"),
        ]
    ]  # fmt: skip
    nodes = [
        helper.make_node("DequantizeLinear", ["a", "sa", "za"], ["ad"]),
        helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["bd"]),
        helper.make_node("Add", ["ad", "bd"], ["c"]),
        helper.make_node("QuantizeLinear", ["c", "sc", "zc"], ["yq"]),
    ]
    shape = [1, 1, 256, 256]
    vi = [helper.make_tensor_value_info(n, TensorProto.UINT8, shape) for n in ("a", "b")]
    a, b = (
        g.reshape(shape) for g in np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8))
    )
    want = _fused_session(_u8_model(nodes, vi, inits)).run(None, {"a": a, "b": b})[0]

    def params(s, z):
        return QParams(np.array(s, np.float32), np.array(z, np.uint8), np.dtype(np.uint8))

    node = helper.make_node("Add", ["a", "b"], ["c"])
    ins = [QTensor(a, params(sa, za)), QTensor(b, params(sb, zb))]
    ctx = KernelContext(node, "half_away", SingleNodeExecutor(OPSET).run, {}, requant="float32")
    assert np.array_equal(KERNELS["Add"].fn(ctx, ins, params(sc, zc)), want)


def test_float32_mode_mirrors_onnxruntime_quantizing_a_float_kept_weight():
    """A float ConvTranspose between DequantizeLinear and QuantizeLinear: onnxruntime quantizes its
    weight (int8 per tensor) when it optimizes the session; --requant float32 does the same."""
    rng = np.random.default_rng(5)
    w = rng.normal(0, 0.3, (6, 4, 2, 2)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.array(0.02, np.float32), "sx"),
        numpy_helper.from_array(np.array(0, np.uint8), "zx"),
        numpy_helper.from_array(np.array(0.01, np.float32), "sy"),
        numpy_helper.from_array(np.array(128, np.uint8), "zy"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
        helper.make_node("ConvTranspose", ["xd", "w"], ["y"], strides=[2, 2], kernel_shape=[2, 2]),
        helper.make_node("QuantizeLinear", ["y", "sy", "zy"], ["yq"]),
    ]
    model = _u8_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 9, 11])], inits)
    x = rng.uniform(0, 5, (1, 6, 9, 11)).astype(np.float32)
    want = _fused_session(model).run(None, {"x": x})[0]
    mirrored = Simulator(model, requant="float32")
    mirrored.run({"x": x}, keep_all=True)
    assert np.array_equal(mirrored.state["yq"], want)
    detail = next(r.detail for r in mirrored.report.nodes if r.op_type == "ConvTranspose")
    assert "onnxruntime quantizes them" in detail
    plain = Simulator(model, requant="fixed")  # the file's own semantics: the weight stays float
    plain.run({"x": x}, keep_all=True)
    assert not np.array_equal(plain.state["yq"], want)
