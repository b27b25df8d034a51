"""Output-aware rounding (algorithms/adaround.py): receptive fields against onnxruntime's Conv, the
rounding search against brute force and its constraints, and the algorithm on the real cls model."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ocrquant.errors import OcrQuantError
from ocrquant.quantization import QuantConfig
from ocrquant.quantization.algorithms.adaround import choose_rounding, conv_patches
from ocrquant.quantization.config import QdqStart
from ocrquant.quantization.saturation import (
    PAIR_LIMIT,
    from_reduction_major,
    reduction_major,
    worst_pair_sum,
)
from ocrquant.tuning import quantize
from ocrquant.zoo.resolve import resolve_model
from tests.conftest import quantize_cls_variants, sample_calib, sample_cls_inputs


@pytest.mark.parametrize(
    "cin,cout,k,stride,pads,dilation,group",
    [
        (6, 8, 3, 1, [1, 1, 1, 1], 1, 1),
        (8, 8, 3, 2, [1, 0, 1, 2], 1, 8),  # depthwise, strided, asymmetric pads
        (3, 4, 3, 1, [2, 2, 2, 2], 2, 1),  # dilated
        (4, 6, 1, 1, [0, 0, 0, 0], 1, 2),  # grouped 1x1
    ],
)
def test_receptive_fields_times_weights_is_onnxruntimes_conv(cin, cout, k, stride, pads, dilation, group):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, cin, 9, 11)).astype(np.float32)
    w = rng.normal(size=(cout, cin // group, k, k)).astype(np.float32)
    node = helper.make_node(
        "Conv",
        ["x", "w"],
        ["y"],
        kernel_shape=[k, k],
        strides=[stride] * 2,
        pads=pads,
        dilations=[dilation] * 2,
        group=group,
    )
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": x})[0]
    fields = conv_patches(x, node, (k, k), group)
    rows = reduction_major(w, "Conv").reshape(group, cout // group, -1)
    ours = np.einsum("ngk,gok->ngo", fields, rows).reshape(fields.shape[0], cout)
    np.testing.assert_allclose(ours, np.moveaxis(y, 1, -1).reshape(-1, cout), atol=1e-4)
    pick = rng.choice(fields.shape[0], fields.shape[0] // 3, replace=False)  # a sample, gathered alone
    np.testing.assert_array_equal(conv_patches(x, node, (k, k), group, pick), fields[pick])


@pytest.mark.parametrize(
    "shape,op_type", [((8, 3, 3, 3), "Conv"), ((16, 1, 3, 3), "Conv"), ((12, 7), "MatMul")]
)
def test_reduction_major_round_trip(shape, op_type):
    w = np.random.default_rng(2).normal(size=shape)
    np.testing.assert_array_equal(from_reduction_major(reduction_major(w, op_type), shape, op_type), w)


def _problem(rng, rows: int, k: int, groups: int, coarse: float = 20.0):
    """Weights on a coarse grid (so rounding matters), correlated inputs and their perturbed copy."""
    w = rng.normal(size=(rows, k))
    scale = np.abs(w).max(axis=1) / 127 * coarse
    x = rng.normal(size=(400, groups, k))
    x[..., 1] = 0.9 * x[..., 0] + 0.1 * x[..., 1]
    xq = x + 0.05 * rng.normal(size=x.shape)
    hess = np.einsum("ngi,ngj->gij", xq, xq)
    cross = np.einsum("ngi,ngj->gij", x, xq)
    group = np.arange(rows) // (rows // groups)

    def error(q: np.ndarray) -> float:
        out = [x[:, group[o]] @ w[o] - xq[:, group[o]] @ (q[o] * scale[o]) for o in range(rows)]
        return float(sum((e**2).sum() for e in out))

    return w, scale, hess, cross, error


@pytest.mark.parametrize("groups", [1, 4])
def test_rounding_lowers_the_output_error_towards_the_brute_force_optimum(groups):
    rng = np.random.default_rng(0)
    w, scale, hess, cross, error = _problem(rng, rows=4, k=10, groups=groups)
    nearest = np.round(w / scale[:, None])
    q, report = choose_rounding(w, scale, nearest, hess, cross, pair_layout=False)
    # brute force per output channel (the objective separates by channel)
    group = np.arange(4) // (4 // groups)
    ref = np.zeros_like(w)
    for o in range(4):
        lo = np.floor(w[o] / scale[o])
        candidates = [lo + np.array(bits) for bits in itertools.product([0, 1], repeat=10)]
        h, c = hess[group[o]], cross[group[o]]
        costs = [
            (qq * scale[o]) @ h @ (qq * scale[o]) - 2 * (w[o] @ c) @ (qq * scale[o]) for qq in candidates
        ]
        ref[o] = candidates[int(np.argmin(costs))]
    assert set(np.unique(q - np.floor(w / scale[:, None]))) <= {0.0, 1.0}  # floor or ceil only
    assert error(q) <= error(nearest) + 1e-9
    assert error(q) < 0.97 * error(nearest)  # the correlated inputs leave room; it is found
    assert error(q) <= error(ref) * 1.05  # within 5% of the per-channel optimum
    assert report["error_after"] <= report["error_before"]


def test_rounding_ends_in_a_local_minimum_no_single_flip_helps():
    rng = np.random.default_rng(3)
    w, scale, hess, cross, error = _problem(rng, rows=3, k=16, groups=1)
    q, _ = choose_rounding(w, scale, np.round(w / scale[:, None]), hess, cross, pair_layout=False)
    lo = np.floor(w / scale[:, None])
    cap = np.abs(np.round(w / scale[:, None])).max(axis=1)
    for o, j in itertools.product(range(3), range(16)):
        flipped = q.copy()
        flipped[o, j] = lo[o, j] + 1 - (q[o, j] - lo[o, j])
        if abs(flipped[o, j]) <= cap[o]:
            assert error(flipped) >= error(q) - 1e-9


def test_rounding_keeps_pairs_inside_int16_and_the_channel_magnitude():
    """Two large same-sign neighbours (64.4 each, nearest 64 + 64 = 128) whose output wants both
    rounded up: unconstrained the search takes 65 + 65 = 130, which onnxruntime's AVX2 kernel
    would saturate for large inputs; with the pair layout it stops at 128."""
    rng = np.random.default_rng(5)
    k = 8
    w = rng.normal(size=(2, k)) * 10
    w[:, :2] = 64.4
    w[:, 4] = 100.0  # the channel's magnitude cap is 100, so only the pair rule can stop 65 + 65
    scale = np.ones(2)
    x = np.abs(rng.normal(size=(300, 1, k))) + 1.0
    hess = np.einsum("ngi,ngj->gij", x, x)
    target = x.copy()
    target[..., :2] *= 1.03  # the float layer sees slightly larger inputs on the pair: round it up
    cross = np.einsum("ngi,ngj->gij", target, x)
    nearest = np.round(w)
    free, _ = choose_rounding(w, scale, nearest, hess, cross, pair_layout=False)
    safe, _ = choose_rounding(w, scale, nearest, hess, cross, pair_layout=True)
    assert (free[:, 0] + free[:, 1] == 130).all()  # what the loss alone asks for
    assert (safe[:, 0] + safe[:, 1] <= PAIR_LIMIT).all()
    assert worst_pair_sum(safe, "MatMul") <= max(PAIR_LIMIT, worst_pair_sum(nearest, "MatMul"))
    assert (np.abs(safe).max(axis=1) <= np.abs(nearest).max(axis=1)).all()


def _logit_error(float_model: Path, int8_model: Path, inputs: list[np.ndarray]) -> float:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    f = ort.InferenceSession(str(float_model), providers=["CPUExecutionProvider"])
    q = ort.InferenceSession(str(int8_model), so, providers=["CPUExecutionProvider"])
    name = f.get_inputs()[0].name
    diffs = [f.run(None, {name: x})[0] - q.run(None, {name: x})[0] for x in inputs]
    return float(np.mean([(d**2).mean() for d in diffs]))


def test_adaround_on_the_real_cls_model(cls_model, tmp_path):
    """On the calibration crops the rounding was chosen for: weights move off nearest, the
    fused-kernel model stays pair-safe, and its logits are no further from the float model's."""

    defaults = ["hs_cle", "hs_floor", "weight_width"]
    results = quantize_cls_variants(
        cls_model,
        tmp_path,
        {"nearest": defaults, "adaround": [*defaults, "adaround"]},
        calib_size=24,
        batch_size=8,
        algorithm_options={"adaround": {"max_batches": 2, "fields_per_batch": 512}},
    )
    report = results["adaround"][0].algorithms["adaround"]
    assert report["layers"] > 20 and report["changed_weights"] > 100
    assert all(r["sqnr_after_db"] >= r["sqnr_before_db"] for r in report["per_layer"].values())
    plain = {i.name: i for i in onnx.load(str(results["nearest"][1])).graph.initializer}
    for init in onnx.load(str(results["adaround"][1])).graph.initializer:
        if init.data_type == TensorProto.INT8 and len(init.dims) == 4 and init.dims[1] > 1:
            before = worst_pair_sum(numpy_helper.to_array(plain[init.name]), "Conv")
            assert worst_pair_sum(numpy_helper.to_array(init), "Conv") <= max(PAIR_LIMIT, before)
    inputs = sample_cls_inputs(24)
    errors = {k: _logit_error(cls_model, v[1], inputs) for k, v in results.items()}
    assert errors["adaround"] <= errors["nearest"] * 1.02, errors


def test_a_run_continued_from_a_saved_qdq_model_writes_the_same_model(cls_model, tmp_path):
    """``auto`` tries bias correction on top of the AdaRound model it chose by continuing from that
    model's pre-pass file (QuantConfig.qdq_start) instead of running AdaRound again: the result must be
    the model a run of both algorithms from scratch writes."""
    defaults = ["hs_cle", "hs_floor", "weight_width"]
    common = {
        "method": "min_max", "cache_dir": tmp_path, "progress": False, "calib_size": 16,
        "algorithm_options": {"adaround": {"max_batches": 1, "fields_per_batch": 256}},
    }  # fmt: skip
    data, cls = sample_calib(), resolve_model(cls_model)
    both = tmp_path / "both.onnx"
    quantize(
        cls,
        "cls",
        data,
        both,
        QuantConfig(algorithms=[*defaults, "adaround", "bias_correction"], **common),
    )
    first, prepass = tmp_path / "ada.onnx", tmp_path / "ada.prepass.onnx"
    ada = quantize(
        cls,
        "cls",
        data,
        first,
        QuantConfig(algorithms=[*defaults, "adaround"], save_prepass=prepass, **common),
    )
    start = QdqStart(prepass, ("adaround",), ada.algorithms)
    continued = tmp_path / "continued.onnx"
    result = quantize(
        cls, "cls", data, continued,
        QuantConfig(algorithms=[*defaults, "adaround", "bias_correction"], qdq_start=start, **common),
    )  # fmt: skip
    assert result.algorithms["adaround"] == ada.algorithms["adaround"]
    want = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(both)).graph.initializer}
    got = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(continued)).graph.initializer}
    assert want.keys() == got.keys()
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    with pytest.raises(OcrQuantError, match="cannot continue"):
        quantize(
            cls,
            "cls",
            data,
            tmp_path / "x.onnx",
            QuantConfig(algorithms=[*defaults, "bias_correction"], qdq_start=start, **common),
        )
