"""The target's prepare rewrites (quantization/rewrites.py) and prepare's denormal flush compute the
same function as what they replace, and touch nothing else."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ocrquant.quantization.prepare import flush_denormal_weights, fold_convtranspose_bias
from ocrquant.quantization.rewrites import PREPARE_REWRITES, apply_rewrites


def _model(nodes, inits, in_shape, out_shape, opset=13):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def _gelu_graph(scale_op: str, extra_reader: bool = False):
    k = math.sqrt(2) if scale_op == "Div" else 1 / math.sqrt(2)
    nodes = [
        helper.make_node(scale_op, ["x", "k"], ["a"], name="scale"),
        helper.make_node("Erf", ["a"], ["e"], name="erf"),
        helper.make_node("Add", ["e", "one"], ["p"], name="add"),
        helper.make_node("Mul", ["x", "p"], ["m"], name="mul"),
        helper.make_node("Mul", ["m", "half"], ["g"], name="half"),
    ]
    if extra_reader:  # the Erf output is also read elsewhere: the chain is not a pure GELU
        nodes.append(helper.make_node("Add", ["g", "e"], ["y"], name="other"))
    else:
        nodes.append(helper.make_node("Relu", ["g"], ["y"], name="relu"))
    return _model(nodes, {"k": k, "one": 1.0, "half": 0.5}, [2, 8, 4, 4], [2, 8, 4, 4])


@pytest.mark.parametrize("scale_op", ["Div", "Mul"])
def test_gelu_becomes_one_node_with_the_same_values(scale_op):
    model = _gelu_graph(scale_op)
    x = np.random.default_rng(0).normal(scale=3, size=(2, 8, 4, 4)).astype(np.float32)
    before = _run(model, x)
    assert apply_rewrites(model, ("gelu",)) == {"gelu": 1}
    assert _ops(model) == Counter({"Gelu": 1, "Relu": 1})
    assert [i.name for i in model.graph.initializer] == []  # the pattern's constants went with it
    np.testing.assert_allclose(_run(model, x), before, atol=1e-5)


def test_gelu_with_a_shared_intermediate_is_left_alone():
    model = _gelu_graph("Div", extra_reader=True)
    assert apply_rewrites(model, ("gelu",)) == {}
    assert _ops(model)["Erf"] == 1


def _resize_graph(factor: float, mode: str = "nearest"):
    attrs = {"mode": mode, "coordinate_transformation_mode": "asymmetric"}
    if mode == "nearest":
        attrs["nearest_mode"] = "floor"
    node = helper.make_node("Resize", ["x", "roi", "scales"], ["y"], name="up", **attrs)
    side = int(5 * factor)
    return _model(
        [node], {"roi": [], "scales": [1, 1, factor, factor]}, [1, 3, 5, 7], [1, 3, side, int(7 * factor)]
    )


@pytest.mark.parametrize("factor,steps", [(8.0, 3), (4.0, 2)])
def test_nearest_resize_by_4_or_8_becomes_a_chain_of_2s_with_equal_output(factor, steps):
    model = _resize_graph(factor)
    x = np.random.default_rng(1).normal(size=(1, 3, 5, 7)).astype(np.float32)
    before = _run(model, x)
    assert apply_rewrites(model, ("resize_x2",)) == {"resize_x2": 1}
    assert _ops(model) == Counter({"Resize": steps})
    np.testing.assert_array_equal(_run(model, x), before)


@pytest.mark.parametrize("factor,mode", [(2.0, "nearest"), (4.0, "linear")])
def test_other_resizes_are_untouched(factor, mode):
    model = _resize_graph(factor, mode)
    assert apply_rewrites(model, ("resize_x2",)) == {}
    assert _ops(model) == Counter({"Resize": 1})


@pytest.mark.parametrize(
    "axes,expected", [([2, 3], "GlobalAveragePool"), ([-1, -2], "GlobalAveragePool"), ([1], "ReduceMean")]
)
def test_spatial_reducemean_becomes_global_average_pool(axes, expected):
    out_shape = [1, 1, 6, 5] if axes == [1] else [1, 4, 1, 1]
    model = _model(
        [helper.make_node("ReduceMean", ["x"], ["y"], name="rm", axes=axes, keepdims=1)],
        {},
        [1, 4, 6, 5],
        out_shape,
    )
    x = np.random.default_rng(2).normal(size=(1, 4, 6, 5)).astype(np.float32)
    before = _run(model, x)
    apply_rewrites(model, ("reducemean_gap",))
    assert _ops(model) == Counter({expected: 1})
    np.testing.assert_allclose(_run(model, x), before, atol=1e-6)


def test_unknown_rewrite_names_the_known_ones():
    with pytest.raises(KeyError, match="gelu"):
        apply_rewrites(_resize_graph(2.0), ("no_such_rewrite",))
    assert {"gelu", "resize_x2", "reducemean_gap", "hardsigmoid_conv"} <= set(PREPARE_REWRITES)


def test_denormal_weights_become_zero_and_nothing_else_changes():
    """prepare_model zeroes float32 weights below the smallest normal number (Intel cores take a
    microcode assist per multiply with one: PP-OCRv6 small det FP32 2.89x faster in onnxruntime);
    normal values, zeros and non-float initializers stay as they are, and the output moves by less than
    the smallest normal float32."""
    tiny = np.finfo(np.float32).tiny
    w = np.random.default_rng(3).normal(size=(4, 3, 1, 1)).astype(np.float32)
    w[0, :, 0, 0] = [tiny / 4, -tiny / 1024, 0.0]  # two denormals and a zero
    w[1, 0, 0, 0] = tiny  # the smallest normal number is not a denormal
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv")
    model = _model([conv], {"w": w}, [1, 3, 5, 5], [1, 4, 5, 5])
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, 2], np.int64), "shape"))
    x = np.random.default_rng(4).normal(size=(1, 3, 5, 5)).astype(np.float32)
    before = _run(model, x)
    assert flush_denormal_weights(model) == 2
    after = numpy_helper.to_array(model.graph.initializer[0])
    expected = w.copy()
    expected[0, :2, 0, 0] = 0.0
    np.testing.assert_array_equal(after, expected)
    assert numpy_helper.to_array(model.graph.initializer[1]).tolist() == [1, 2]
    # channel 0 now sums no denormal products: it differs from before by less than a normal float32
    np.testing.assert_allclose(_run(model, x), before, rtol=0, atol=tiny)
    np.testing.assert_array_equal(_run(model, x)[0, 1:], before[0, 1:])
    assert flush_denormal_weights(model) == 0


def _gelu_node_graph():
    gelu = helper.make_node("Gelu", ["x"], ["y"], name="gelu", domain="com.microsoft")
    model = _model([gelu], {}, [2, 8, 4, 4], [2, 8, 4, 4])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


def test_gelu_sigmoid_is_x_times_sigmoid_of_1702x_within_its_known_error():
    """The one approximating rewrite: x * sigmoid(1.702 x), within 0.021 of GELU everywhere (largest
    near |x| = 2.5) and exact at 0 and in the tails."""
    model = _gelu_node_graph()
    x = np.linspace(-8, 8, 2 * 8 * 4 * 4, dtype=np.float32).reshape(2, 8, 4, 4)
    before = _run(model, x)
    assert apply_rewrites(model, ("gelu_sigmoid",)) == {"gelu_sigmoid": 1}
    assert _ops(model) == Counter({"Mul": 2, "Sigmoid": 1})
    after = _run(model, x)
    err = np.abs(after - before)
    assert 0.015 < err.max() < 0.021
    assert err[np.abs(x) > 7].max() < 1e-3 and err[np.abs(x) < 0.1].max() < 1e-3
    np.testing.assert_allclose(after, x / (1 + np.exp(-1.702 * x)), atol=1e-5)


def test_convtranspose_bias_add_folds_into_the_kernel_with_the_same_output():
    """prepare folds DB's ConvTranspose + per-channel Add (paddle2onnx writes them apart) into the
    ConvTranspose bias; a second Add of a full tensor is left alone."""
    rng = np.random.default_rng(5)
    w = rng.normal(size=(3, 4, 2, 2)).astype(np.float32)
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w"], ["t"], name="up", strides=[2, 2], kernel_shape=[2, 2]),
        helper.make_node("Add", ["t", "b"], ["y"], name="bias"),
    ]
    model = _model(nodes, {"w": w, "b": rng.normal(size=(1, 4, 1, 1))}, [1, 3, 5, 5], [1, 4, 10, 10])
    x = rng.normal(size=(1, 3, 5, 5)).astype(np.float32)
    before = _run(model, x)
    assert fold_convtranspose_bias(model) == 1
    assert _ops(model) == Counter({"ConvTranspose": 1})
    assert [i.name for i in model.graph.initializer] == ["w", "up_bias"]  # the Add's constant went with it
    np.testing.assert_allclose(_run(model, x), before, rtol=0, atol=1e-6)

    full = _model(nodes, {"w": w, "b": rng.normal(size=(1, 4, 10, 10))}, [1, 3, 5, 5], [1, 4, 10, 10])
    assert fold_convtranspose_bias(full) == 0


def _se_graph(shared_gate_input: bool = False):
    """An SE block: global pool, Conv + Relu, Conv -> HardSigmoid(alpha 0.2) -> Mul with the input;
    optionally the gate Conv's output is also read by an Add (then it cannot absorb the gate)."""
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["p"], name="pool"),
        helper.make_node("Conv", ["p", "w1", "b1"], ["c1"], name="squeeze"),
        helper.make_node("Relu", ["c1"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2", "b2"], ["c2"], name="excite"),
        helper.make_node("HardSigmoid", ["c2"], ["g"], name="gate", alpha=0.2, beta=0.5),
        helper.make_node("Mul", ["x", "g"], ["y"] if not shared_gate_input else ["m"], name="scale"),
    ]
    if shared_gate_input:
        nodes.append(helper.make_node("Add", ["m", "c2"], ["y"], name="other"))
    inits = {
        "w1": rng.normal(0, 0.5, (4, 16, 1, 1)),
        "b1": rng.normal(0, 0.1, 4),
        "w2": rng.normal(0, 2.0, (16, 4, 1, 1)),
        "b2": rng.normal(0, 0.5, 16),
    }
    return _model(nodes, inits, [2, 16, 6, 6], [2, 16, 6, 6])


def test_hardsigmoid_folds_into_its_conv_as_a_clip_with_the_same_output():
    """``hardsigmoid_conv``: HardSigmoid(Conv(x, W, b)) = Clip(Conv(x, alpha W, alpha b + beta), 0, 1);
    the gate's pre-activation is spread wide enough that both ends of the Clip are reached."""
    model = _se_graph()
    model.graph.output.append(helper.make_tensor_value_info("g", TensorProto.FLOAT, [2, 16, 1, 1]))
    x = np.random.default_rng(6).normal(scale=2, size=(2, 16, 6, 6)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref, gate = sess.run(None, {"x": x})
    assert (gate == 0).any() and (gate == 1).any() and ((gate > 0) & (gate < 1)).any()
    assert apply_rewrites(model, ("hardsigmoid_conv",)) == {"hardsigmoid_conv": 1}
    assert _ops(model) == Counter(GlobalAveragePool=1, Conv=2, Relu=1, Clip=1, Mul=1)
    onnx.checker.check_model(model)
    np.testing.assert_allclose(_run(model, x), ref, rtol=1e-5, atol=1e-6)


def test_hardsigmoid_whose_conv_output_is_read_elsewhere_is_left_alone():
    model = _se_graph(shared_gate_input=True)
    assert apply_rewrites(model, ("hardsigmoid_conv",)) == {}
    assert _ops(model)["HardSigmoid"] == 1
