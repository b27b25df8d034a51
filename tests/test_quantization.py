"""Quantization library: calibrators against known optima, preparation equivalence, QDQ writing on the
real cls model with real crops, target constraints, refusals and the calibration cache."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from ocrquant.data import open_dataset
from ocrquant.data.types import Dataset
from ocrquant.errors import OcrQuantError
from ocrquant.evaluation import evaluate
from ocrquant.evaluation.evaluate import fidelity
from ocrquant.fileio import read_sidecar
from ocrquant.quantization import QuantConfig, is_quantized, max_abs_diff, prepare_model
from ocrquant.quantization.calibration import (
    CALIBRATORS,
    QSpec,
    TensorStats,
    collect_statistics,
    create_calibrator,
)
from ocrquant.quantization.calibration.stats import STATS_THREADS, _hist_range, _histogram, iterate_outputs
from ocrquant.quantization.calibration.walk import GraphWalk
from ocrquant.quantization.graph import float_tensors
from ocrquant.quantization.pipeline import algorithm_names
from ocrquant.quantization.targets import compute_scale_zp, get_target, is_pow2
from ocrquant.runtime import RuntimeOptions, create_runner
from ocrquant.tuning import quantize
from ocrquant.zoo.resolve import resolve_model
from ocrquant.zoo.task import build_task
from tests.conftest import quantize_cls_variants, sample_calib, sample_cls_inputs, zoo_model_path


def stats_of(x: np.ndarray, bins: int = 2048) -> TensorStats:
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    hist, _ = np.histogram(x, bins=bins, range=(lo, hi))
    return TensorStats("t", float(x.min()), float(x.max()), hist.astype(np.int64), lo, hi)


def fake_quant_mse(x: np.ndarray, lo: float, hi: float, spec: QSpec) -> float:
    scale, zp = compute_scale_zp(lo, hi, spec.dtype, spec.symmetric)
    qmin, qmax = (-127, 127) if spec.symmetric else (-128, 127)
    q = np.clip(np.round(x / scale) + zp.astype(np.float64), qmin, qmax)
    return float(np.mean(((q - zp) * scale - x) ** 2))


def test_a_range_below_the_smallest_normal_float_gets_a_normal_scale():
    """A dead channel (PP-OCRv6 small rec's SE conv, weights ~1e-38) would get a denormal scale that a
    flushing runtime reads as 0; it is zeros at that precision, so it gets scale 1.0 and code 0."""
    tiny = float(np.finfo(np.float32).tiny)
    lo = np.array([-2.0e-38, -1.0, 0.0])
    hi = np.array([3.0e-38, 2.0, 0.0])
    scale, zp = compute_scale_zp(-np.maximum(-lo, hi), np.maximum(-lo, hi), "int8", True)
    assert scale.tolist() == [1.0, np.float32(2.0 / 127), 1.0] and zp.tolist() == [0, 0, 0]
    scale, _ = compute_scale_zp(lo, hi, "uint8", False)
    assert scale[0] == 1.0 and scale[1] == np.float32(3.0 / 255) and bool((scale >= tiny).all())


# ------------------------------------------------------------------ calibrators on synthetic data
def test_min_max_on_uniform_is_the_observed_range():
    x = np.random.default_rng(0).uniform(-2.0, 3.0, 200_000)
    lo, hi = create_calibrator("min_max").compute_range(stats_of(x), QSpec("int8", False))
    assert (lo, hi) == (x.min(), x.max())
    lo, hi = create_calibrator("min_max").compute_range(stats_of(x), QSpec("int8", True))
    assert hi == pytest.approx(max(abs(x.min()), x.max())) and lo == -hi


def test_percentile_clips_an_outlier_min_max_keeps_it():
    x = np.concatenate([np.random.default_rng(1).normal(0, 1, 500_000), [60.0]])
    st = stats_of(x)
    _, hi_mm = create_calibrator("min_max").compute_range(st, QSpec("int8", False))
    lo, hi = create_calibrator("percentile", percentile=99.99).compute_range(st, QSpec("int8", False))
    assert hi_mm == 60.0
    assert 3.0 < hi < 5.0 and -5.0 < lo < -3.0  # the 0.005% tails of N(0,1) are near +-3.9
    _, t = create_calibrator("percentile", percentile=99.99).compute_range(st, QSpec("int8", True))
    assert 3.0 < t < 5.0


@pytest.mark.parametrize("symmetric", [True, False])
def test_mse_range_matches_brute_force(symmetric):
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.laplace(0.3, 1.0, 100_000), rng.uniform(-25, 25, 30)])
    spec = QSpec("int8", symmetric)
    lo, hi = create_calibrator("mse").compute_range(stats_of(x), spec)
    got = fake_quant_mse(x, lo, hi, spec)
    # brute force on the real samples: a fine grid of clipping ranges
    absmax = np.abs(x).max()
    if symmetric:
        grid = [(-t, t) for t in np.linspace(absmax / 400, absmax, 400)]
    else:
        grid = [
            (x.min() * a, x.max() * b) for a in np.linspace(0.02, 1, 30) for b in np.linspace(0.02, 1, 30)
        ]
    best = min(fake_quant_mse(x, a, b, spec) for a, b in grid)
    mm = fake_quant_mse(x, *create_calibrator("min_max").compute_range(stats_of(x), spec), spec)
    assert got <= best * 1.05
    assert got < mm  # the outliers make min/max worse


def test_kl_threshold_lies_inside_the_distribution():
    x = np.concatenate([np.random.default_rng(3).normal(0, 1, 400_000), [40.0, -40.0]])
    lo, hi = create_calibrator("kl").compute_range(stats_of(x), QSpec("int8", True))
    assert lo == -hi and 2.0 < hi < 20.0
    relu = np.maximum(np.random.default_rng(4).normal(0, 1, 400_000), 0)  # one-sided
    lo, hi = create_calibrator("kl").compute_range(stats_of(relu), QSpec("int8", False))
    assert lo == 0.0 and 1.5 < hi <= relu.max()


def test_kl_keeps_a_threshold_only_where_it_does_not_raise_the_squared_error():
    """A HardSwish-like tensor (a few negatives down to -0.375, the bulk below 6, 0.05 % of values
    between 60 and 100: PP-OCRv4 det's): plain KL clips at about 6, which costs more squared error
    than the unclipped range, so the guarded KL returns the observed range. On a light (Gaussian)
    tail KL's clip lowers the error too, and stays."""
    from ocrquant.quantization.calibration.calibrators import range_error

    rng = np.random.default_rng(5)
    heavy = np.concatenate([np.abs(rng.normal(0, 1.5, 200_000)), rng.uniform(60, 100, 100), [-0.375] * 1000])
    spec = QSpec("uint8", False)
    stats = stats_of(heavy)
    raw = create_calibrator("kl", mse_guard=False).compute_range(stats, spec)
    guarded = create_calibrator("kl").compute_range(stats, spec)
    observed = create_calibrator("min_max").compute_range(stats, spec)
    assert raw[1] < 10 and range_error(stats, spec, *raw) > range_error(stats, spec, *observed)
    assert guarded == observed
    light = stats_of(np.abs(rng.normal(0, 1, 400_000)))
    kept = create_calibrator("kl").compute_range(light, spec)
    assert kept == create_calibrator("kl", mse_guard=False).compute_range(light, spec) and kept[1] < light.max


def test_unknown_method_is_a_user_error():
    with pytest.raises(OcrQuantError, match="unknown calibration method"):
        create_calibrator("magic")


# ------------------------------------------------------------------ real model, real crops


@pytest.fixture(scope="module")
def cls_inputs() -> list[np.ndarray]:
    """Real cls inputs from the embedded sample: each crop at its own width (no common padding)."""
    return sample_cls_inputs(12)


@pytest.fixture(scope="module")
def prepared(cls_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prep") / "cls.prep.onnx"
    report = prepare_model(cls_model, out)
    assert report.opset_after >= 13 and "BatchNormalization" not in report.ops_after
    assert report.fused.get("HardSwish", 0) > 0
    return out


def test_prepared_model_equals_original(cls_model, prepared, cls_inputs):
    assert max_abs_diff(cls_model, prepared, cls_inputs) < 1e-4


def test_observed_model_is_exact(prepared, cls_inputs):
    """The per-layer algorithms run only the part of the graph a tensor needs: the same values as the
    whole graph gives, from fewer nodes (and the model input itself, from none)."""
    import onnxruntime as ort

    from ocrquant.quantization.calibration.stats import augment_model, observed_model, observer_session

    model = onnx.load(str(prepared))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    early, late = convs[2].input[0], convs[-1].output[0]
    pruned = observed_model(model, [early])
    assert 0 < len(pruned.graph.node) < len(model.graph.node) / 4
    assert [o.name for o in pruned.graph.output] == [early]
    whole = observer_session(augment_model(model, [early, late]))
    part = observer_session(observed_model(model, [early, late]))
    name = whole.get_inputs()[0].name
    for x in cls_inputs[:3]:
        a, b = whole.run([early, late], {name: x}), part.run([early, late], {name: x})
        assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    only_input = observed_model(model, [name])
    assert len(only_input.graph.node) == 0 and not only_input.graph.initializer
    out = ort.InferenceSession(only_input.SerializeToString()).run(None, {name: cls_inputs[0]})[0]
    assert np.array_equal(out, cls_inputs[0])


def test_graph_walk_equals_runs_from_the_input_as_biases_change(cls_model, cls_inputs, tmp_path):
    """Bias correction walks the QDQ model forward layer by layer instead of re-running it from the
    input per layer: every value it reads equals a run from the input of the model as it is at that
    moment, also after a bias was changed whose DequantizeLinear the walk had already passed."""

    variants = quantize_cls_variants(cls_model, tmp_path, {"plain": []}, calib_size=32, batch_size=4)
    path = variants["plain"][1]
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv" and len(n.input) == 3]
    inputs = cls_inputs[:3]
    walk = GraphWalk(model, inputs)
    over_budget = GraphWalk(model, inputs, max_bytes=1)  # reads from the input after its first step
    held, reads_held = 0, False
    for conv in convs:
        out = conv.output[0]
        want = list(iterate_outputs(model, [out], inputs, progress=False))
        for w in (walk, over_budget):
            got = list(w.values(model, [out]))
            assert all(np.array_equal(g[out], v[out]) for g, v in zip(got, want, strict=True))
        bias = inits[producer[conv.input[2]].input[0]]
        bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 7, bias.name))
        walk.advance(model, [out])
        over_budget.advance(model, [out])
        held = max(held, len(walk.held()))
        if out in walk.held():  # a held tensor is read from the walk: the changed model's value
            now = list(iterate_outputs(model, [out], inputs, progress=False))
            assert all(
                np.array_equal(g[out], v[out]) for g, v in zip(walk.values(model, [out]), now, strict=True)
            )
            reads_held = True
    assert len(convs) > 10 and walk.cuts and not over_budget.cuts and reads_held
    # only what later nodes read is kept: a handful of maps, not the model's activations
    assert 0 < held <= 4 and model.graph.input[0].name not in walk.held()


def test_graph_walk_runs_a_graph_with_control_flow_from_its_input():
    """An If body reads outer tensors implicitly, so such a graph is not cut; reads still work."""
    from onnx import TensorProto, helper

    def body(op: str) -> onnx.GraphProto:
        out = helper.make_tensor_value_info("o", TensorProto.FLOAT, None)
        return helper.make_graph([helper.make_node(op, ["r"], ["o"])], op, [], [out])

    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("If", ["c"], ["y"], then_branch=body("Neg"), else_branch=body("Abs")),
            helper.make_node("Mul", ["y", "y"], ["z"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [helper.make_tensor("c", TensorProto.BOOL, [], [True])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.array([[-1.0, 2.0]], np.float32)
    walk = GraphWalk(model, [x, 2 * x])
    assert [v["r"].tolist() for v in walk.values(model, ["r"])] == [[[0, 2]], [[0, 4]]]
    walk.advance(model, ["r"])
    assert [v["z"].tolist() for v in walk.values(model, ["z"])] == [[[0, 4]], [[0, 16]]]


def _affine_block_model(path: Path) -> None:
    """PP-LCNetV3's pattern: Conv -> a*x+b -> HardSwish -> a*x+b -> Conv 1x1 (foldable both sides),
    then -> a*x+b -> padded 3x3 depthwise Conv (must stay: the padded border would see b)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    inits = {
        "w1": rng.normal(size=(8, 3, 3, 3)), "b1": rng.normal(size=8), "w2": rng.normal(size=(8, 8, 1, 1)),
        "b2": rng.normal(size=8), "w3": rng.normal(size=(8, 1, 3, 3)), "b3": rng.normal(size=8),
    }  # fmt: skip
    scalars = {f"s{i}": np.array([v], np.float32) for i, v in enumerate([1.7, -0.4, 0.8, 0.3, 1.2, 0.5])}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["s0", "c1"], ["m1"], name="lab1_mul"),
        helper.make_node("Add", ["m1", "s1"], ["a1"], name="lab1_add"),
        helper.make_node("HardSwish", ["a1"], ["h1"], name="hs1"),
        helper.make_node("Mul", ["h1", "s2"], ["m2"], name="lab2_mul"),
        helper.make_node("Add", ["s3", "m2"], ["a2"], name="lab2_add"),
        helper.make_node("Conv", ["a2", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Mul", ["c2", "s4"], ["m3"], name="relu_in"),
        helper.make_node("Relu", ["m3"], ["r3"], name="relu"),
        helper.make_node("Mul", ["r3", "s4"], ["m4"], name="lab3_mul"),
        helper.make_node("Add", ["m4", "s5"], ["a4"], name="lab3_add"),
        helper.make_node("Conv", ["a4", "w3", "b3"], ["y"], name="conv3", group=8, pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "lab",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in {**inits, **scalars}.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_scalar_affine_blocks_fold_into_their_convs(tmp_path):
    src, dst = tmp_path / "lab.onnx", tmp_path / "lab.prep.onnx"
    _affine_block_model(src)
    report = prepare_model(src, dst)
    # lab1 into conv1 (after it), lab2 into conv2 (before it, 1x1: no padding), conv2's own scale
    # into conv2 (after it); lab3 stays: conv3 is padded
    assert report.fused["scalar affine -> Conv"] == 3
    ops = report.ops_after
    assert ops["Conv"] == 3 and ops["Mul"] == 1 and ops["Add"] == 1
    x = [np.random.default_rng(1).normal(size=(1, 3, 16, 16)).astype(np.float32) for _ in range(2)]
    assert max_abs_diff(src, dst, x) < 1e-4


def test_statistics_across_different_widths_work_for_every_method(prepared):
    model = onnx.load(str(prepared))
    tensors = float_tensors(model)
    rng = np.random.default_rng(0)
    inputs = [rng.uniform(-1, 1, (1, 3, 48, w)).astype(np.float32) for w in (64, 192, 320)]
    stats = collect_statistics(model, tensors, lambda: iter(inputs), progress=False)
    x = stats.tensors["x"]
    assert x.hist.sum() == sum(i.size for i in inputs)  # every value binned once, fixed range merges
    some = {t: QSpec() for t in list(stats.tensors)[:12]}
    for method in CALIBRATORS:
        ranges = create_calibrator(method).compute_ranges(stats, some)
        assert ranges and all(np.isfinite(v).all() and v[0] <= 0 <= v[1] for v in ranges.values()), method


def test_statistics_reduced_in_threads_equal_one_thread_s(prepared):
    """Each batch's tensors are reduced in ``STATS_THREADS`` threads: min, max and every histogram count
    equal what one thread computes from the same model outputs, batch after batch."""
    assert STATS_THREADS > 1
    model = onnx.load(str(prepared))
    tensors = float_tensors(model)[:40]
    rng = np.random.default_rng(3)
    inputs = [rng.uniform(-1, 1, (2, 3, 48, w)).astype(np.float32) for w in (96, 320, 160)]
    stats = collect_statistics(model, tensors, lambda: iter(inputs), bins=512, progress=False)
    outs = list(iterate_outputs(model, tensors, inputs, progress=False))  # the outputs it reduced
    assert set(stats.tensors) == set(tensors)
    for t, st in stats.tensors.items():
        lo, hi = min(float(o[t].min()) for o in outs), max(float(o[t].max()) for o in outs)
        assert (st.min, st.max) == (lo, hi), t
        assert (st.hist_lo, st.hist_hi) == _hist_range(lo, hi), t
        one_thread = sum(_histogram(o[t], st.hist_lo, st.hist_hi, 512) for o in outs)
        assert np.array_equal(st.hist, one_thread), t


def test_nan_during_calibration_names_the_tensor(prepared):
    model = onnx.load(str(prepared))
    bad = np.full((1, 3, 48, 64), np.nan, dtype=np.float32)
    with pytest.raises(OcrQuantError, match="'x'.*NaN"):
        collect_statistics(model, ["x"], lambda: iter([bad]), progress=False)


@pytest.fixture(scope="module")
def quantized_cls(cls_model, tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("q")
    out = tmp / "cls.int8.onnx"
    cfg = QuantConfig(method="min_max", calib_size=16, batch_size=4, cache_dir=tmp / "cache", progress=False)
    result = quantize(resolve_model(cls_model), "cls", sample_calib(), out, cfg)
    assert not result.cache_hit
    return out, tmp


def test_qdq_model_close_to_float_on_real_crops(cls_model, quantized_cls, cls_inputs):
    import onnxruntime as ort

    out, _ = quantized_cls
    assert is_quantized(out)
    f = ort.InferenceSession(str(cls_model), providers=["CPUExecutionProvider"])
    q = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    pf = np.concatenate([f.run(None, {"x": x})[0] for x in cls_inputs])
    pq = np.concatenate([q.run(None, {"x": x})[0] for x in cls_inputs])
    assert np.abs(pf - pq).max() < 0.2
    assert (pf.argmax(1) == pq.argmax(1)).mean() >= 0.9


def test_sidecar_records_every_conv_quantized(quantized_cls):
    out, _ = quantized_cls
    side = json.loads(out.with_name("cls.int8.quant.json").read_text())
    assert side["node_counts"]["Conv"]["float"] == 0 and side["node_counts"]["Conv"]["quantized"] > 0
    act = [t for t in side["tensors"].values() if t["kind"] == "activation"]
    assert act and all(t["dtype"] == "uint8" and "calibrated_range" in t for t in act)  # ort-cpu: u8 act
    assert side["settings"]["method"] == "min_max"


def test_logits_stay_float_and_the_gemm_stays_integer(quantized_cls, tmp_path):
    """The classifier's Gemm feeds the float Softmax: no Q/DQ rounds its logits, and onnxruntime still
    runs it as an integer QGemm with a float output."""
    import onnxruntime as ort

    out, _ = quantized_cls
    model = onnx.load(str(out))
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    readers = [n.op_type for n in model.graph.node if gemm.output[0] in n.input]
    assert readers and "QuantizeLinear" not in readers
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}
    assert "QGemm" in ops and "Gemm" not in ops


def test_quantized_model_knows_its_task_from_the_sidecar(quantized_cls):
    from ocrquant.zoo.resolve import resolve_model

    out, _ = quantized_cls
    assert resolve_model(out).task == "cls"


def test_second_method_reuses_the_calibration_cache(cls_model, quantized_cls):
    _, tmp = quantized_cls
    cfg = QuantConfig(
        method="percentile",
        calib_size=16,
        batch_size=4,
        cache_dir=tmp / "cache",
        exclude=["Gemm"],
        progress=False,
    )
    result = quantize(resolve_model(cls_model), "cls", sample_calib(), tmp / "cls.pct.onnx", cfg)
    assert result.cache_hit
    assert result.node_counts["Gemm"] == {"quantized": 0, "float": 1}
    assert any("excluded by 'Gemm'" in v["reason"] for v in result.float_nodes.values())


def test_already_quantized_model_is_refused(quantized_cls):
    out, tmp = quantized_cls
    with pytest.raises(OcrQuantError, match="already quantized"):
        quantize(resolve_model(out), "cls", sample_calib(), tmp / "again.onnx", QuantConfig(progress=False))
    assert not (tmp / "again.onnx").exists()


def test_model_of_another_task_is_refused_before_calibration(cls_model, tmp_path):
    """A cls model given as det: one error naming the file and the shapes, not an onnxruntime failure
    inside calibration, and no output."""
    with pytest.raises(OcrQuantError, match=r"output has shape \?x2, a det model's is N x 1 x H x W") as err:
        quantize(
            resolve_model(cls_model),
            "det",
            sample_calib("det"),
            tmp_path / "o.onnx",
            QuantConfig(progress=False),
        )
    assert str(cls_model) in str(err.value)
    assert not (tmp_path / "o.onnx").exists()


def test_npu_pow2_migrates_rec_scales_and_leaves_cls_alone():
    """PP-LCNet rec reads nothing on per-tensor power-of-two int8 without HS-CLE's scale migration
    (targets.py: 0.0000 -> 0.4967 of 300 rec_train crops with mse); cls keeps the target's defaults
    (on tensorrt, HS-CLE cost cls labels)."""
    rec = algorithm_names(QuantConfig(target="npu-pow2"), "rec")
    assert "hs_cle" in rec and "hs_floor" in rec
    assert "hs_cle" not in algorithm_names(QuantConfig(target="npu-pow2"), "cls")


def test_npu_pow2_scales_are_powers_of_two(cls_model, quantized_cls):
    _, tmp = quantized_cls
    out = tmp / "cls.npu.onnx"
    cfg = QuantConfig(
        method="min_max",
        target="npu-pow2",
        calib_size=16,
        batch_size=4,
        cache_dir=tmp / "cache",
        progress=False,
    )
    quantize(resolve_model(cls_model), "cls", sample_calib(), out, cfg)
    model = onnx.load(str(out))
    inits = {i.name: i for i in model.graph.initializer}
    scales = [
        numpy_helper.to_array(inits[n.input[1]]).reshape(-1)
        for n in model.graph.node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear")
    ]
    assert scales
    assert all(is_pow2(float(s)) for arr in scales for s in arr)
    zps = [
        numpy_helper.to_array(inits[n.input[2]])
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and len(n.input) > 2
    ]
    assert all(np.all(z == 0) for z in zps)  # symmetric


def test_empty_calibration_dir_is_a_clear_error(cls_model, tmp_path):
    """An empty folder is refused where it is opened, naming it; a calibration set with no samples
    (a filtered one) is refused by the quantizer before anything is written."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(OcrQuantError, match="no images found") as err:
        open_dataset(tmp_path / "empty", "cls")
    assert str(tmp_path / "empty") in str(err.value)
    calib = sample_calib()
    empty = Dataset(calib.root, "cls", calib.format, [])
    with pytest.raises(OcrQuantError, match="calibration set has no cls samples"):
        quantize(
            resolve_model(cls_model),
            "cls",
            empty,
            tmp_path / "o.onnx",
            QuantConfig("min_max", progress=False),
        )
    assert not (tmp_path / "o.onnx").exists()


# ------------------------------------------------------------------ HS-CLE and the ort-cpu layout
@pytest.mark.parametrize("fuse", [False, True])
def test_hs_cle_keeps_the_float_function(cls_model, cls_inputs, tmp_path, fuse):
    """HS-CLE rescales producer/consumer weights and the HardSwish gate: exact up to float rounding,
    on both the decomposed (PaddleOCR export) and the fused HardSwish form."""
    from ocrquant.quantization.algorithms import AlgorithmContext, create_algorithm
    from ocrquant.quantization.targets import get_target

    prep = tmp_path / "prep.onnx"
    prepare_model(cls_model, prep, fuse_hardswish=fuse)
    model = onnx.load(str(prep))
    ctx = AlgorithmContext(
        model=model,
        profile=get_target("ort-cpu"),
        batches=lambda: iter(cls_inputs),
        work_dir=tmp_path,
        progress=False,
    )
    report = create_algorithm("hs_cle").apply(ctx)
    assert report["edges"] >= 5 and report["min_scale"] < 0.5  # it really rescaled channels
    out = tmp_path / "cle.onnx"
    onnx.save(ctx.model, str(out))
    before = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(prep)).graph.initializer}
    changed = [
        i.name
        for i in ctx.model.graph.initializer
        if i.name in before and not np.array_equal(before[i.name], numpy_helper.to_array(i))
    ]
    assert len(changed) >= 2 * report["edges"]
    assert max_abs_diff(prep, out, cls_inputs) < 1e-4


def test_hs_scale_keeps_the_float_function_and_evens_the_next_conv_input(cls_model, cls_inputs, tmp_path):
    """hs_scale (the openvino target's HS-CLE): each HardSwish stays one op, a per-channel Mul after it
    divides its output by ``s`` and the consumer Conv takes ``s`` back: exact up to float rounding,
    and a depthwise consumer then reads channels of one range (alpha 1)."""
    from ocrquant.quantization.algorithms import AlgorithmContext, create_algorithm
    from ocrquant.quantization.algorithms.hs_cle import channel_min_max

    prep = tmp_path / "prep.onnx"
    prepare_model(cls_model, prep, fuse_hardswish=True)
    before = Counter(n.op_type for n in onnx.load(str(prep)).graph.node)
    ctx = AlgorithmContext(
        model=onnx.load(str(prep)), profile=get_target("openvino"), batches=lambda: iter(cls_inputs),
        work_dir=tmp_path, progress=False,
    )  # fmt: skip
    report = create_algorithm("hs_scale").apply(ctx)
    assert report["edges"] >= 5 and report["min_scale"] < 0.5
    after = Counter(n.op_type for n in ctx.model.graph.node)
    assert after["HardSwish"] == before["HardSwish"] and after["Mul"] == before["Mul"] + report["edges"]
    assert after["Conv"] == before["Conv"]  # no gate convs, unlike hs_cle
    out = tmp_path / "scaled.onnx"
    onnx.save(ctx.model, str(out))
    assert max_abs_diff(prep, out, cls_inputs) < 1e-4
    readers = {i: n for n in ctx.model.graph.node for i in n.input}
    scaled = [n.output[0] for n in ctx.model.graph.node if n.name.endswith("_hsscale")]
    dw = [t for t in scaled if any(a.name == "group" and a.i > 1 for a in readers[t].attribute)]
    assert dw
    lo, hi = channel_min_max(ctx.model, dw, lambda: iter(cls_inputs), 32, False)
    for t in dw:
        r = np.maximum(hi[t], 0) - np.minimum(lo[t], 0)
        alive = r > 1e-2 * r.max()
        assert np.allclose(r[alive], r.max(), rtol=1e-3), t


def test_openvino_layout_quantizes_only_what_its_integer_kernels_read(cls_model, cls_inputs, tmp_path):
    """--target openvino: Q/DQ only on the inputs of Conv/MatMul/Gemm/Add/Concat (never between a
    Conv and its HardSwish), HardSwish whole, no padded channels; plain OpenVINO compiles the file
    as written and runs every convolution in 8-bit integers; labels as the float model's."""
    pytest.importorskip("openvino", reason="openvino extra not installed (pip install 'ocrquant[openvino]')")
    from ocrquant.analysis.profile import PROFILERS
    from ocrquant.quantization.targets import OPENVINO_OPS

    out = tmp_path / "cls.ov.onnx"
    cfg = QuantConfig(method="min_max", calib_size=16, batch_size=4, target="openvino", cache_dir=tmp_path,
                      progress=False)  # fmt: skip
    quantize(resolve_model(cls_model), "cls", sample_calib(), out, cfg)
    side = read_sidecar(out)
    assert side["settings"]["algorithms"] == ["hs_scale", "weight_width"]
    assert side["algorithms"]["hs_scale"]["edges"] > 0 and "align_channels" not in side["graph_passes"]
    q = onnx.load(str(out))
    prod = {o: n for n in q.graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in q.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    activation_dqs = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in prod]
    assert activation_dqs
    assert {r.op_type for dq in activation_dqs for r in readers[dq.output[0]]} <= set(OPENVINO_OPS)
    hardswish = [n for n in q.graph.node if n.op_type == "HardSwish"]
    assert len(hardswish) >= 5 and {prod[h.input[0]].op_type for h in hardswish} == {"Conv"}
    assert [r.op_type for r in readers[q.graph.input[0].name]] == ["QuantizeLinear"]  # the stem is int8 too

    profile = PROFILERS["openvino"](out, cls_inputs[:2], runs=2, threads=1)
    convs = [n for n in profile.nodes if "Convolution" in n.op_type]
    assert convs and {n.precision for n in convs} <= {"i8", "u8"}

    def labels(path: Path) -> np.ndarray:
        runner = create_runner(path, "openvino", RuntimeOptions(threads=1))
        return np.array([runner.run({runner.input_names[0]: x})[0].argmax() for x in cls_inputs])

    assert (labels(out) == labels(cls_model)).mean() >= 0.9


def test_activation_cle_keeps_the_float_function_and_evens_the_channels(cls_model, cls_inputs, tmp_path):
    """CLE with activation ranges: exact rescaling of Conv -> ReLU -> Conv pairs, after which each
    depthwise-consumed activation has every channel's range equal to the widest (alpha 1)."""
    from ocrquant.quantization.algorithms import AlgorithmContext, create_algorithm
    from ocrquant.quantization.algorithms.hs_cle import channel_min_max
    from ocrquant.quantization.targets import get_target

    prep = tmp_path / "prep.onnx"
    prepare_model(cls_model, prep)
    ctx = AlgorithmContext(
        model=onnx.load(str(prep)), profile=get_target("ort-cpu"), batches=lambda: iter(cls_inputs),
        work_dir=tmp_path, progress=False,
    )  # fmt: skip
    algo = create_algorithm("cle", ranges="activations", min_ratio=1e-6)
    pairs = algo.find_pairs(ctx)
    report = algo.apply(ctx)
    assert report["pairs"] == len(pairs) > 0 and report["min_scale"] < 0.5
    out = tmp_path / "cle.onnx"
    onnx.save(ctx.model, str(out))
    assert max_abs_diff(prep, out, cls_inputs) < 1e-4
    dw = [c2.input[0] for _, c2 in pairs if any(a.name == "group" and a.i > 1 for a in c2.attribute)]
    assert dw  # cls has ReLU -> depthwise pairs
    lo, hi = channel_min_max(ctx.model, dw, lambda: iter(cls_inputs), 32, False)
    for t in dw:
        r = np.maximum(hi[t], 0) - np.minimum(lo[t], 0)
        alive = r > 1e-6 * r.max()
        assert np.allclose(r[alive], r.max(), rtol=1e-3), t


def _hs_cle_on_graph(tmp_path, tail: list, consumer_w: np.ndarray, scalars: dict | None = None):
    """Build ``x -> Conv(8 channels, ranges 100x apart) -> y -> *tail -> out`` (``tail`` reads ``y``,
    its last node writes ``out``, its consumer conv's weight is ``w2``), run HS-CLE on real random
    inputs, return its report, the rewritten model and the float max abs diff to the original."""
    from onnx import TensorProto, helper

    from ocrquant.quantization.algorithms import AlgorithmContext, create_algorithm
    from ocrquant.quantization.targets import get_target

    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(8, 3, 1, 1)) * np.logspace(-1, 1, 8).reshape(-1, 1, 1, 1)
    arrays = {"w1": w1, "w2": consumer_w, **(scalars or {})}
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in arrays.items()]
    out_channels = consumer_w.shape[0]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["y"], name="c1"), *tail], "hs_edge",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, out_channels, 8, 8])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    src, out = tmp_path / "edge.onnx", tmp_path / "edge.cle.onnx"
    onnx.save(model, str(src))
    xs = [rng.normal(size=(1, 3, 8, 8)).astype(np.float32) * 3 for _ in range(4)]
    ctx = AlgorithmContext(
        model=onnx.load(str(src)), profile=get_target("ort-cpu"), batches=lambda: iter(xs),
        work_dir=tmp_path, progress=False,
    )  # fmt: skip
    report = create_algorithm("hs_cle").apply(ctx)
    onnx.save(ctx.model, str(out))
    return report, ctx.model, max_abs_diff(src, out, xs)


def test_hs_cle_handles_the_hardsigmoid_form_of_hardswish(tmp_path):
    """paddle2onnx writes PP-OCRv4's HardSwish as ``Mul(x, HardSigmoid(x, 1/6, 0.5))``: HS-CLE finds
    that edge too and keeps the function."""
    from onnx import helper

    tail = [
        helper.make_node("HardSigmoid", ["y"], ["g"], name="hsig", alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["y", "g"], ["z"], name="hs"),
        helper.make_node("Conv", ["z", "w2"], ["out"], name="c2"),
    ]
    w2 = np.random.default_rng(1).normal(size=(4, 8, 1, 1))
    report, model, diff = _hs_cle_on_graph(tmp_path, tail, w2)
    assert report["edges"] == 1 and report["min_scale"] < 0.3
    assert "HardSigmoid" not in {n.op_type for n in model.graph.node}
    assert diff < 1e-4


def test_hs_cle_passes_through_an_affine_block_into_a_padded_depthwise_conv(tmp_path):
    """PP-OCRv4: HardSwish -> a*x + b -> padded depthwise Conv (the affine cannot be folded there).
    HS-CLE still rescales the edge: a*x passes z/s through, b becomes b/s per channel; exact."""
    from onnx import helper

    tail = [
        helper.make_node("HardSwish", ["y"], ["z"], name="hs"),
        helper.make_node("Mul", ["a", "z"], ["za"], name="lab_mul"),
        helper.make_node("Add", ["za", "b"], ["u"], name="lab_add"),
        helper.make_node("Conv", ["u", "w2"], ["out"], name="dw", group=8, pads=[1, 1, 1, 1]),
    ]
    w2 = np.random.default_rng(1).normal(size=(8, 1, 3, 3))
    report, _, diff = _hs_cle_on_graph(tmp_path, tail, w2, {"a": [0.8], "b": [0.3]})
    assert report["edges"] == 1 and report["depthwise_consumers"] == 1 and report["min_scale"] < 0.3
    assert diff < 1e-4


def test_ort_cpu_layout_every_conv_runs_as_qlinearconv(quantized_cls, tmp_path):
    """After ORT_ENABLE_ALL, the default ort-cpu cls model has no float Conv, no float HardSwish, no
    float SE gate (each HardSigmoid folded into its Conv as a Clip, which the requantization absorbs)
    and no NHWC Transpose shuffles left: what makes INT8 faster than FP32 on onnxruntime CPU."""
    import collections

    import onnxruntime as ort

    out, _ = quantized_cls
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    n_conv = sum(1 for n in onnx.load(str(out)).graph.node if n.op_type == "Conv")
    assert ops["Conv"] == 0 and ops["QLinearConv"] == n_conv > 40
    assert ops["HardSwish"] == 0 and ops["Transpose"] <= 2
    assert ops["HardSigmoid"] == ops["Clip"] == 0
    side = json.loads(out.with_name("cls.int8.quant.json").read_text())
    assert side["prepare"]["fused"]["hardsigmoid_conv"] == 9
    assert side["settings"]["algorithms"] == ["hs_cle", "hs_floor", "weight_width"]
    assert side["algorithms"]["hs_cle"]["edges"] > 0
    # MaxPool stays float (onnxruntime's uint8 MaxPool is a scalar loop): DQ -> MaxPool -> Q survives
    # optimisation, because the Q's scale is the input's raised by 2**-12, with the same zero point
    opt = onnx.load(str(tmp_path / "opt.onnx"))
    prod = {o: n for n in opt.graph.node for o in n.output}
    (pool,) = [n for n in opt.graph.node if n.op_type == "MaxPool"]
    src = prod[pool.input[0]]
    while src.op_type == "ReorderInput":  # the float NCHWc MaxPool's layout change (AVX2 hosts)
        src = prod[src.input[0]]
    assert src.op_type == "DequantizeLinear"
    (node,) = [n for n in onnx.load(str(out)).graph.node if n.op_type == "MaxPool"]
    src, dst = side["tensors"][_pre_qdq(node.input[0])], side["tensors"][node.output[0]]
    assert dst["scale"] == pytest.approx(src["scale"] * (1 + 2**-12), rel=1e-6)
    assert dst["scale"] != src["scale"]
    assert dst["zero_point"] == src["zero_point"]


def _pre_qdq(name: str) -> str:
    """The float tensor behind a DequantizeLinear output name written by onnxruntime's quantizer."""
    return name.removesuffix("_DequantizeLinear_Output")


def test_vnni_detection_and_pair_safe_weights(tmp_path, quantized_cls):
    """Without VNNI, ort-cpu gives the image conv (and, where measured better, every dense conv)
    pair-safe int8 weights: no (kh, kw, cin) pair of same-sign weights adds up past 128, so MLAS's
    u8s8 int16 pair sums cannot saturate (tests/test_saturation.py checks that against the kernel).
    The detection reads /proc/cpuinfo-style flags."""
    from ocrquant.quantization.saturation import PAIR_LIMIT, worst_pair_sum
    from ocrquant.quantization.targets import cpu_has_vnni, get_target, host_profile

    avx2 = tmp_path / "avx2"
    avx2.write_text("processor : 0\nflags : fpu sse2 avx avx2 fma\n")
    vnni = tmp_path / "vnni"
    vnni.write_text("processor : 0\nflags : fpu avx2 avx512f avx512_vnni\n")
    assert not cpu_has_vnni(str(avx2)) and cpu_has_vnni(str(vnni))
    assert host_profile(get_target("ort-cpu"), has_vnni=False).weight_dtype == "int8p"
    assert host_profile(get_target("ort-cpu"), has_vnni=True).weight_dtype == "int8"
    if cpu_has_vnni():
        pytest.skip("host has VNNI: plain 8-bit weights everywhere")
    out, _ = quantized_cls
    model = onnx.load(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    prod = {o: n for n in model.graph.node for o in n.output}
    pairs = {"input": [], "other": []}
    for n in model.graph.node:
        if n.op_type != "Conv" or prod[n.input[1]].op_type != "DequantizeLinear":
            continue
        q = inits[prod[n.input[1]].input[0]].astype(np.int32)
        if q.shape[1] == 1:  # depthwise: int32 kernel, never narrowed
            continue
        reads_input = (
            prod[n.input[0]].op_type == "DequantizeLinear" and prod[prod[n.input[0]].input[0]].input[0] == "x"
        )
        pairs["input" if reads_input else "other"].append(worst_pair_sum(q, "Conv"))
    assert len(pairs["input"]) == 1 and pairs["input"][0] <= PAIR_LIMIT  # the image conv: always safe
    side = json.loads(out.with_name("cls.int8.quant.json").read_text())
    chosen = side["algorithms"]["weight_width"]["scope"]  # measured on the fused kernels
    assert chosen == side["settings"]["target"]["narrow_weight_scope"]
    if chosen == "dense":
        assert max(pairs["other"]) <= PAIR_LIMIT
    else:
        assert max(pairs["other"]) > PAIR_LIMIT  # plain absmax scales elsewhere


def _mean_shift(float_model: Path, int8_model: Path, inputs: list[np.ndarray]) -> float:
    """Mean |per-channel output mean, INT8 - float| over every Conv, matched by node name. Where the
    quantizer folded a ReLU into the Conv, the INT8 Conv emits the pre-ReLU value under the ReLU
    output's name: that value is compared after the ReLU, with the float ReLU output. An SE gate's
    Conv (``hardsigmoid_conv``) emits its HardSigmoid's pre-clip value: compared clipped to [0, 1]."""
    from ocrquant.quantization.calibration.stats import iterate_outputs

    fm, qm = onnx.load(str(float_model)), onnx.load(str(int8_model))
    fprod = {o: n for n in fm.graph.node for o in n.output}
    names = sorted({n.output[0] for n in qm.graph.node if n.op_type == "Conv"} & set(fprod))
    clip = {"Relu": (0.0, None), "HardSigmoid": (0.0, 1.0)}
    after = {t: clip[fprod[t].op_type] for t in names if fprod[t].op_type in clip}
    assert all(fprod[t].op_type in ("Conv", *clip) for t in names)

    def means(model: onnx.ModelProto, bounds: dict[str, tuple]) -> dict[str, np.ndarray]:
        outs = list(iterate_outputs(model, names, inputs, progress=False))
        seen = {t: [np.clip(o[t], *bounds[t]) if t in bounds else o[t] for o in outs] for t in names}
        return {t: np.mean([v.mean(axis=(0, 2, 3)) for v in seen[t]], axis=0) for t in names}

    f, q = means(fm, {}), means(qm, after)  # INT8 channel groups may be padded (align_channels)
    return float(np.mean([np.abs(q[t][: len(f[t])] - f[t]).mean() for t in names]))


def test_bias_correction_removes_the_mean_shift(prepared, cls_model, cls_inputs, tmp_path):
    """What bias correction promises: the per-channel mean of each Conv output, INT8 vs float, on the
    calibration crops, moves closer (layer by layer, so upstream corrections are not counted twice)."""
    results = quantize_cls_variants(
        cls_model, tmp_path, {"plain": [], "corrected": ["bias_correction"]}, calib_size=96, batch_size=4
    )
    shifts = {name: _mean_shift(prepared, path, cls_inputs) for name, (_, path) in results.items()}
    result = results["corrected"][0]
    qm = onnx.load(str(tmp_path / "cls.corrected.onnx"))
    with_bias = sum(n.op_type == "Conv" and len(n.input) == 3 for n in qm.graph.node)
    assert result.algorithms["bias_correction"]["corrected"] == with_bias  # ReLU-fused convs too
    assert shifts["corrected"] < 0.7 * shifts["plain"]


def test_auto_warns_when_the_held_out_drop_passes_a_point(caplog):
    """``auto`` never floats a layer itself; past a one-point held-out drop on too few images for the
    budget search to act alone, it names the option that does."""
    from ocrquant.tuning.method_search import _warn_drop

    with caplog.at_level("WARNING", logger="ocrquant"):
        _warn_drop(0.9, 300, "acc")
        _warn_drop(1.4, 2000, "acc")  # enough images: the budget search runs next (escalate_to_budget)
    assert not caplog.records
    with caplog.at_level("WARNING", logger="ocrquant"):
        _warn_drop(1.4, 300, "acc")
    (record,) = caplog.records
    assert "1.40 points below FP32 on 300 held-out images" in record.getMessage()
    assert "--max-drop" in record.getMessage()


def test_the_budget_search_follows_auto_only_past_a_point_on_enough_images(cls_model, tmp_path, caplog):
    """The rule that turns on the budget search after ``auto``, read from the sidecar ``auto`` wrote:
    a one-sided 90 % bound of the held-out drop past one point, on at least 1000 held-out images.
    Otherwise, or for a model not chosen by ``auto`` (no method search), the model passes through;
    ``--keep-all-int8`` warns."""
    from ocrquant.quantization.config import QuantResult
    from ocrquant.tuning.budget import escalate_to_budget, needs_budget

    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    side = tmp_path / "m.quant.json"
    # (drop, its 90 % upper bound, held-out images) -> what needs_budget says
    cases = [
        ((0.95, 1.5, 2000), 0.95),  # under a point, but not shown to be: search
        ((1.4, 2.0, 999), None),  # too few images to search on
        ((0.5, 0.9, 4000), None),
        ((-0.2, 0.3, 4000), None),
    ]
    for (drop, bound, size), expected in cases:
        validation = {"drop_points": drop, "drop_bound_points": bound, "size": size}
        side.write_text(json.dumps({"method_search": {"validation": validation}}))
        assert needs_budget(model) == expected, (drop, bound, size)
    side.write_text(json.dumps({"settings": {"method": "mse"}}))
    assert needs_budget(model) is None
    side.write_text(json.dumps({"method_search": {"validation": {"drop_points": 1.4, "size": 2000}}}))
    result = QuantResult(
        output=model, sidecar=side, task="rec", target="ort-cpu", method="auto", num_calibration_images=200,
        node_counts={}, float_nodes={}, timings={}, algorithms={}, cache_hit=False,
    )  # fmt: skip
    with caplog.at_level("WARNING", logger="ocrquant"):
        same, search = escalate_to_budget(
            resolve_model(cls_model), "cls", sample_calib(), result, QuantConfig(), enabled=False
        )
    assert same is result and search is None
    assert "kept all-INT8 as asked" in caplog.records[-1].getMessage()


def test_the_budget_search_after_auto_keeps_autos_record_in_the_sidecar(cls_model, tmp_path):
    """When the search after ``auto`` rewrites the model, the sidecar it writes still says what ``auto``
    ran (its trials' seconds, used by ``benchmarks/quantize_time.py``) and adds the search's own time
    and the blocks it kept float."""
    from ocrquant.fileio import write_sidecar
    from ocrquant.quantization import quantize_recipe
    from ocrquant.tuning.budget import escalate_to_budget

    out = tmp_path / "cls.int8.onnx"
    cfg = QuantConfig(method="min_max", algorithms=[], calib_size=12, batch_size=4, progress=False,
                      cache_dir=tmp_path / "cache")  # fmt: skip
    result = quantize_recipe(resolve_model(cls_model), "cls", sample_calib(), out, cfg)
    search = {
        "chosen": {"method": "min_max", "options": {}, "algorithms": []},
        "validation": {"drop_points": 1.4, "drop_bound_points": 2.0, "size": 2000},  # as if auto lost 1.4
        "seconds": {"range_candidates": 1.5},
    }
    write_sidecar(out, {**read_sidecar(out), "method_search": search})
    written, report = escalate_to_budget(
        resolve_model(cls_model), "cls", sample_calib(), result, cfg, threads=1, progress=False
    )
    assert report is not None and report.met  # the 48 sample crops: within a point
    kept = read_sidecar(out)["method_search"]
    assert kept["seconds"]["range_candidates"] == 1.5 and kept["seconds"]["budget_search"] > 0
    assert kept["budget_search"]["float_blocks"] == report.chosen
    assert kept["budget_search"]["report"] == "cls.int8.mixed.json" and written.output == out


def test_auto_method_picks_the_best_candidate_and_validates_bias_correction(cls_model, tmp_path, monkeypatch):
    """``auto`` compares the range methods on held-out calibration-side crops by fidelity to the
    float model, then tries the profile's validated algorithms in turn (here all three: AdaRound, bias
    correction, output distillation; distill recorded as skipped without torch), each kept only if it
    raises that held-out fidelity without lowering held-out accuracy."""
    import importlib.util

    from ocrquant.tuning.method_search import quantize_auto

    every = ("adaround", "bias_correction", "distill")
    monkeypatch.setitem(get_target("ort-cpu").task_validated_algorithms, "cls", every)

    cfg = QuantConfig(
        method="auto",
        calib_size=12,
        batch_size=4,
        cache_dir=tmp_path / "cache",
        algorithm_options={
            "adaround": {"max_batches": 1, "fields_per_batch": 256},
            "bias_correction": {"max_batches": 2, "group_size": 8},
            "distill": {"epochs": 1, "min_steps": 4},
        },
        progress=False,
    )
    out = tmp_path / "cls.auto.onnx"
    _, rows = quantize_auto(resolve_model(cls_model), "cls", sample_calib(), out, cfg, val_size=24)
    side = json.loads(out.with_name("cls.auto.quant.json").read_text())
    search = side["method_search"]
    methods, trials = search["candidates"][:4], search["candidates"][4:]
    assert len(rows) == 7 and [t["algorithm"] for t in trials] == ["adaround", "bias_correction", "distill"]
    assert search["validation"]["criterion"] == "val_fidelity"
    assert all(
        0.0 <= r["val_fidelity"] <= 1.0 and 0.0 <= r["val_metric"] <= 1.0 for r in rows if "skipped" not in r
    )
    best = max(methods, key=lambda r: r["val_fidelity"])
    baseline = best.get("all_algorithms", best)
    for trial in trials:  # each on the model kept so far; kept where fidelity rises and labels do not fall
        if "skipped" in trial:
            assert trial["algorithm"] == "distill" and importlib.util.find_spec("torch") is None
            assert trial["skipped"] == "needs torch" and "distill" not in side["settings"]["algorithms"]
            continue
        assert (trial["method"], trial["options"]) == (best["method"], best["options"])
        rises = trial["val_fidelity"] > baseline["val_fidelity"]
        kept = rises and trial["val_metric"] >= baseline["val_metric"]
        assert trial["kept"] == kept
        assert (trial["algorithm"] in side["settings"]["algorithms"]) == kept
        assert (trial["algorithm"] in search["chosen"]["algorithms"]) == kept
        assert trial["vs_without_ci95"]["low"] <= trial["vs_without_ci95"]["high"]
        baseline = trial if kept else baseline
    # the held-out crops (24 samples, both turns of up to 24 crops) are withheld from anything that learns
    assert 0 < side["settings"]["holdout_images"] <= 24
    # the held-out label metric of the model written, and its drop from FP32 on the same images
    val = search["validation"]
    final = next((r for r in reversed(rows) if r.get("kept")), best)  # the last algorithm kept, else the pick
    assert val["chosen_metric"] == final.get("all_algorithms", final)["val_metric"]
    assert abs(val["drop_points"] - 100 * (val["float_metric"] - val["chosen_metric"])) < 1e-3
    # the one line the CLI prints: the range picked among the candidates, each trial kept, not kept or
    # not tried (and why), so a run without torch says which recipe it ran
    from ocrquant.tuning.method_search import search_summary

    line = search_summary(search)
    assert line.startswith(f"auto: range {best['method']}") and "min_max" in line and "mse" in line
    for trial in trials:
        if "skipped" in trial:
            assert f"not tried {trial['algorithm']} ({trial['skipped']})" in line
        else:
            part = "kept " if trial["kept"] else "not kept "
            assert any(p.startswith(part) and trial["algorithm"] in p for p in line.split("; "))
    # candidates never written beside the output; the float model quantized is (analysis reference)
    assert [p.name for p in tmp_path.glob("cls.auto.*.onnx")] == ["cls.auto.float.onnx"]
    assert side["output"] == str(out) and rows == search["candidates"]
    # every other candidate carries the held-out interval of its difference to the pick
    for r in methods:
        if r is not best:
            iv = r["vs_chosen_ci95"]
            assert iv["low"] <= r["val_fidelity"] - best["val_fidelity"] + 1e-9 <= iv["high"] + 2e-9


def test_auto_ranks_det_by_the_held_out_output_loss(tmp_path, monkeypatch):
    """det (``DetMetric.rank_by_output_loss``): the range candidate with the lowest mean held-out output
    loss is chosen, whatever its box figures; each other candidate carries the bootstrap interval of
    its loss advantage over the pick; an accuracy algorithm (bias correction) is kept only where the
    held-out output loss falls and the labels do not resolve a fall (``keep_learned``)."""
    from ocrquant.tuning.method_search import LOSS_KEY, keep_learned, quantize_auto

    monkeypatch.setitem(get_target("ort-cpu").task_validated_algorithms, "det", ("bias_correction",))
    model = resolve_model(zoo_model_path("ppocrv3-det"))
    cfg = QuantConfig(
        method="auto",
        calib_size=4,
        cache_dir=tmp_path / "cache",
        algorithm_options={"bias_correction": {"max_batches": 1}},
        progress=False,
    )
    out = tmp_path / "det.auto.onnx"
    _, rows = quantize_auto(model, "det", sample_calib("det"), out, cfg, val_size=4)
    search = read_sidecar(out)["method_search"]
    assert search["validation"]["criterion"] == LOSS_KEY
    methods, trials = rows[:4], rows[4:]
    assert all(r[LOSS_KEY] > 0 for r in rows)
    best = min(methods, key=lambda r: r[LOSS_KEY])
    assert (search["chosen"]["method"], search["chosen"]["options"]) == (best["method"], best["options"])
    for r in methods:
        if r is not best:  # interval of (pick's loss - this loss), mean over the held-out images
            iv = r["vs_chosen_loss_ci95"]
            assert iv["low"] <= best[LOSS_KEY] - r[LOSS_KEY] + 1e-8 <= iv["high"] + 2e-8
    [trial] = trials
    assert trial["algorithm"] == "bias_correction" and trial["judged_by"] == "held-out output loss"
    baseline = best.get("all_algorithms", best)
    assert trial["without_output_loss"] == pytest.approx(baseline[LOSS_KEY], abs=1e-8)
    kept = keep_learned([trial[LOSS_KEY]], [trial["without_output_loss"]], trial["vs_without_ci95"])
    assert trial["kept"] == kept
    assert ("bias_correction" in search["chosen"]["algorithms"]) == kept


def test_weightless_nodes_between_float_nodes_stay_float(tmp_path):
    """PP-OCRv6 det's head (ConvTranspose -> bias Add -> Relu -> ConvTranspose, the Add and Relu reading
    each other) and a LayerNorm's variance (ReduceMean -> eps Add -> Sqrt): the target runs the
    neighbours in float, so Q/DQ around them would only round the map's logits / the variance to 8
    bits. The bias Add before the output Sigmoid is part of the output tail. A residual Add between
    two Convs stays quantized."""
    from onnx import TensorProto, helper

    from ocrquant.quantization.qdq import QuantPlan, write_qdq_model
    from ocrquant.quantization.targets import get_target

    rng = np.random.default_rng(2)
    inits = {
        "w1": rng.normal(size=(4, 3, 3, 3)),
        "w2": rng.normal(size=(4, 4, 1, 1)),
        "wt": rng.normal(size=(4, 1, 2, 2)),
        "bt": rng.normal(size=(1, 1, 1, 1)),
        "wt2": rng.normal(size=(4, 2, 2, 2)),
        "bt2": rng.normal(size=(1, 2, 1, 1)),
        "wt3": rng.normal(size=(2, 1, 2, 2)),
        "eps": np.array([1e-5]),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c1", "w2"], ["c2"], name="conv2"),
        helper.make_node("Add", ["c1", "c2"], ["res"], name="residual"),
        helper.make_node("ConvTranspose", ["res", "wt"], ["ct"], name="convT", strides=[2, 2]),
        helper.make_node("Add", ["ct", "bt"], ["logit"], name="bias_add"),
        helper.make_node("Sigmoid", ["logit"], ["prob"], name="sigmoid"),
        helper.make_node("ReduceMean", ["res"], ["var"], name="mean", axes=[1]),
        helper.make_node("Add", ["var", "eps"], ["var_eps"], name="eps_add"),
        helper.make_node("Sqrt", ["var_eps"], ["std"], name="sqrt"),
        helper.make_node("ConvTranspose", ["res", "wt2"], ["ct2"], name="convT2", strides=[2, 2]),
        helper.make_node("Add", ["ct2", "bt2"], ["ct2b"], name="bias2_add"),
        helper.make_node("Relu", ["ct2b"], ["ct2r"], name="relu2"),
        helper.make_node("ConvTranspose", ["ct2r", "wt3"], ["up"], name="convT3", strides=[2, 2]),
    ]
    graph = helper.make_graph(
        nodes,
        "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [
            helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 1, 16, 16]),
            helper.make_tensor_value_info("std", TensorProto.FLOAT, [1, 1, 8, 8]),
            helper.make_tensor_value_info("up", TensorProto.FLOAT, [1, 1, 32, 32]),
        ],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    names = ("x", "c1", "c2", "res", "ct", "logit", "var", "var_eps", "ct2", "ct2b", "ct2r")
    plan = QuantPlan(profile=get_target("ort-cpu"), ranges={t: (-8.0, 8.0) for t in names})
    out = tmp_path / "head.int8.onnx"
    body = write_qdq_model(model, plan, out)
    assert {n for n, f in body["float_nodes"].items() if f["reason"].startswith("between float")} == {
        "eps_add",
        "bias2_add",
        "relu2",
    }
    assert body["float_nodes"]["bias_add"]["reason"].startswith("feeds a model output")
    q = onnx.load(str(out))
    quantized = {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
    assert {"c1", "c2", "res"} <= quantized
    assert not quantized & {"ct", "logit", "var", "var_eps", "ct2", "ct2b", "ct2r"}
    assert body["node_counts"]["Add"] == {"quantized": 1, "float": 3}


def test_an_algorithm_whose_extra_is_missing_says_which(monkeypatch):
    """An optional algorithm (distill needs torch) fails before any work, naming the package and the
    extra to install; ``auto`` skips it instead (see the auto test)."""
    from ocrquant.quantization.algorithms import ALGORITHMS, create_algorithm

    monkeypatch.setattr(ALGORITHMS["distill"], "requires", ("ocrquant_no_such_package",))
    with pytest.raises(OcrQuantError, match="distill.*ocrquant_no_such_package"):
        create_algorithm("distill")


def test_algo_option_reaches_the_algorithm_and_misspellings_fail_early() -> None:
    from ocrquant.cli.quantize import algorithm_options
    from ocrquant.quantization.algorithms import create_algorithm

    opts = algorithm_options(["adaround.max_reduction=8192", "adaround.seed=3"])
    assert opts == {"adaround": {"max_reduction": 8192, "seed": 3}}  # JSON values: ints stay ints
    assert create_algorithm("adaround", **opts["adaround"]).max_reduction == 8192
    bad_values = [("adaround.nope=1", "bad option"), ("nope.x=1", "unknown algorithm")]
    bad_values.append(("adaround", "NAME.KEY"))
    for bad, says in bad_values:
        with pytest.raises(OcrQuantError, match=says):
            algorithm_options([bad])


def test_ort_cpu_quantizes_a_maxpool_only_where_a_conv_feeds_it() -> None:
    """onnxruntime runs a uint8 MaxPool as its fast NhwcMaxPool next to an NHWC QLinearConv, and as a
    scalar NCHW loop anywhere else; the ort-cpu layout keeps the second kind float."""
    from onnx import helper

    from ocrquant.quantization.qdq import select_nodes
    from ocrquant.quantization.targets import TARGETS

    w = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p1"], name="after_conv", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Mul", ["p1", "p1"], ["m"], name="mul"),
        helper.make_node("MaxPool", ["m"], ["p2"], name="after_mul", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p2", "w"], ["y"], name="conv2"),
    ]
    vi = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 4, 8, 8]) for n in ("x", "y")]
    model = helper.make_model(helper.make_graph(nodes, "g", vi[:1], vi[1:], [w]))
    selection = select_nodes(model, TARGETS["ort-cpu"], [])
    assert "after_conv" in selection.quantize and "after_mul" not in selection.quantize
    assert "runs faster in float" in selection.float_reasons["after_mul"]


def _scalar_mul_model() -> onnx.ModelProto:
    """Conv -> Relu -> Mul(1/6) -> Conv, plus a Mul(-0.5) and a Mul(0.25) that feeds a graph output:
    only the first Mul is a pure relabelling of an integer grid."""
    from onnx import helper

    rng = np.random.default_rng(5)
    inits = {
        "w1": rng.normal(size=(4, 3, 3, 3)),
        "w2": rng.normal(size=(4, 4, 1, 1)),
        "sixth": np.array(1 / 6),
        "neg": np.array(-0.5),
        "quarter": np.array([0.25]),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
        helper.make_node("Mul", ["r1", "sixth"], ["m1"], name="Div@0"),
        helper.make_node("Conv", ["m1", "w2"], ["c2"], name="conv2"),
        helper.make_node("Mul", ["neg", "c2"], ["m2"], name="negative"),
        helper.make_node("Conv", ["m2", "w2"], ["c3"], name="conv3"),
        helper.make_node("Mul", ["c3", "quarter"], ["y"], name="to_output"),
    ]
    return _xy_model("scalar_mul", nodes, inits, [1, 3, 8, 8], [1, 4, 8, 8])


def _xy_model(name: str, nodes: list, inits: dict, x_shape: list[int], y_shape: list[int]) -> onnx.ModelProto:
    """An opset-13 float model from ``nodes`` reading ``x`` and writing ``y``, constants as float32."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_fold_scalar_mul_removes_only_the_positive_scalar_mul_and_keeps_the_outputs(tmp_path):
    """ort-cpu's ``fold_scalar_mul``: the Mul by 1/6 and its Q go, the DQs after it read the ReLU's
    integers with scale s * 1/6; onnxruntime computes the same integers as the unfolded model."""
    import dataclasses

    import onnxruntime as ort

    from ocrquant.quantization.qdq import QuantPlan, apply_qdq_passes, write_qdq_model
    from ocrquant.quantization.targets import get_target

    model = _scalar_mul_model()
    x = np.random.default_rng(6).normal(size=(1, 3, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    inner = ["c1", "r1", "m1", "c2", "m2", "c3"]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(
        [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in inner]
    )
    found = ort.InferenceSession(probe.SerializeToString()).run(inner, {"x": x})
    values = dict(zip(inner, found, strict=True))
    ranges = {n: (min(float(v.min()), 0.0), float(v.max()) * 1.01) for n, v in values.items()}
    y = ref.run(None, {"x": x})[0]
    ranges["x"], ranges["y"] = (float(x.min()), float(x.max())), (float(y.min()), float(y.max()))
    assert ranges["m1"] == pytest.approx(tuple(v / 6 for v in ranges["r1"]), rel=1e-6)  # as calibrated
    profile = get_target("ort-cpu")
    assert "fold_scalar_mul" in profile.qdq_passes
    outs = {}
    for name, passes in (("fold", profile.qdq_passes), ("plain", ())):
        plan = QuantPlan(profile=dataclasses.replace(profile, qdq_passes=passes), ranges=dict(ranges))
        path = tmp_path / f"{name}.onnx"
        body = write_qdq_model(model, plan, path)
        apply_qdq_passes(path, plan.profile, body)
        outs[name] = (onnx.load(str(path)), body)
    folded, body = outs["fold"]
    mul_names = {n.name for n in folded.graph.node if n.op_type == "Mul"}
    assert "Div@0" not in mul_names and {"negative", "to_output"} <= mul_names
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == "m1" for n in folded.graph.node)
    record = body["graph_passes"]["fold_scalar_mul"]
    assert record["count"] == 1 and record["rewrites"]["m1"]["grid_of"] == "r1"
    t = body["tensors"]
    assert t["m1"]["scale"] == pytest.approx(t["r1"]["scale"] / 6, rel=1e-6)
    assert t["m1"]["zero_point"] == t["r1"]["zero_point"]
    assert body["node_counts"]["Mul"]["quantized"] == 3
    assert "graph_passes" not in outs["plain"][1]
    # The fold removed a requantization that was the identity: onnxruntime computes the same numbers
    run = {
        k: ort.InferenceSession(str(tmp_path / f"{k}.onnx"), providers=["CPUExecutionProvider"]).run(
            None, {"x": x}
        )[0]
        for k in ("fold", "plain")
    }
    np.testing.assert_array_equal(run["fold"], run["plain"])
    # A Mul whose output range is not its input's times c (here 3 % wider) keeps its requantization
    plan = QuantPlan(profile=profile, ranges={**ranges, "m1": (0.0, ranges["m1"][1] * 1.03)})
    body = write_qdq_model(model, plan, tmp_path / "wide.onnx")
    apply_qdq_passes(tmp_path / "wide.onnx", profile, body)
    assert body["graph_passes"]["fold_scalar_mul"]["count"] == 0
    assert np.abs(run["fold"] - y).max() < 0.05 * np.abs(y).max()
    # and the integer simulator reads the rescaled DequantizeLinear the same way as the file's own
    # semantics (onnxruntime unfused: on a host without VNNI the fused u8 x s8 kernels saturate pairs
    # of products, which this file's plain int8 weights reach and the simulator does not model)
    from ocrquant.analysis.simulate import Simulator

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    exact = ort.InferenceSession(str(tmp_path / "fold.onnx"), so, providers=["CPUExecutionProvider"])
    sim = Simulator(tmp_path / "fold.onnx").run({"x": x})["y"]
    np.testing.assert_allclose(
        sim, exact.run(None, {"x": x})[0], rtol=0, atol=2 * t["c3"]["scale"] * 0.25 + 1e-6
    )


def test_default_cls_model_folds_its_hardswish_divisions(quantized_cls):
    """PP-OCRv3 cls: the 9 Paddle-form HardSwishes end in a Mul by 1/6; ort-cpu removes each (with its
    QLinearMul kernel) and the sidecar says so."""
    out, _ = quantized_cls
    side = json.loads(out.with_name("cls.int8.quant.json").read_text())
    rewrites = side["graph_passes"]["fold_scalar_mul"]["rewrites"]
    assert len(rewrites) == 9 and all(r["factor"] == pytest.approx(1 / 6) for r in rewrites.values())
    names = {n.name for n in onnx.load(str(out)).graph.node}
    assert not names & {r["node"] for r in rewrites.values()}
    for tensor, r in rewrites.items():
        entry, src = side["tensors"][tensor], side["tensors"][r["grid_of"]]
        assert entry["scale"] == pytest.approx(src["scale"] / 6, rel=1e-5)
        assert entry["zero_point"] == src["zero_point"]


def _channel_model() -> onnx.ModelProto:
    """A MobileNetV3 block with widths MLAS's fast int8 kernels refuse: Conv 3->24, ReLU, depthwise
    24, an SE gate (GAP, 24->6->24, HardSigmoid, Mul), Conv 24->16, then Conv 16->12 into a graph
    output (a group that must stay as it is)."""
    from onnx import helper

    rng = np.random.default_rng(8)
    inits = {
        "w1": rng.normal(0, 0.3, (24, 3, 3, 3)),
        "b1": rng.normal(0, 0.1, 24),
        "wd": rng.normal(0, 0.3, (24, 1, 3, 3)),
        "bd": rng.normal(0, 0.1, 24),
        "ws1": rng.normal(0, 0.3, (6, 24, 1, 1)),
        "ws2": rng.normal(0, 0.3, (24, 6, 1, 1)),
        "bs2": rng.normal(0, 0.1, 24),
        "wp": rng.normal(0, 0.3, (16, 24, 1, 1)),
        "wo": rng.normal(0, 0.3, (12, 16, 1, 1)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "wd", "bd"], ["dw"], name="dw", group=24, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["dw"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Conv", ["gap", "ws1"], ["s1"], name="se1"),
        helper.make_node("Relu", ["s1"], ["s1r"], name="se_relu"),
        helper.make_node("Conv", ["s1r", "ws2", "bs2"], ["s2"], name="se2"),
        helper.make_node("HardSigmoid", ["s2"], ["gate"], name="gate", alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["r2", "gate"], ["se"], name="se_mul"),
        helper.make_node("Conv", ["se", "wp"], ["p"], name="project"),
        helper.make_node("Conv", ["p", "wo"], ["y"], name="out"),
    ]
    return _xy_model("channels", nodes, inits, [1, 3, 12, 20], [1, 12, 12, 20])


def _fused_convs(path: Path) -> Counter:
    """Conv / QLinearConv counts in onnxruntime's optimised graph of ``path``."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(path.with_suffix(".opt.onnx"))
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    return Counter({k: ops[k] for k in ("Conv", "QLinearConv")})


def _ort_cpu_with_and_without(model, qdq_pass: str, xs: list, tmp_path: Path, name: str) -> tuple[dict, dict]:
    """``model`` written as ort-cpu QDQ with ranges measured on ``xs``, once with ``qdq_pass`` only
    (``name``) and once with no pass (``plain``): the files and the writer's sidecar bodies."""
    import dataclasses

    import onnxruntime as ort

    from ocrquant.quantization.qdq import QuantPlan, apply_qdq_passes, write_qdq_model
    from ocrquant.quantization.targets import get_target

    inner = [o for n in model.graph.node for o in n.output]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(
        [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in ["x", *inner]]
    )
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    runs = [dict(zip(["x", *inner], sess.run(None, {"x": x}), strict=True)) for x in xs]
    ranges = {
        n: (min(min(float(r[n].min()) for r in runs), 0.0), max(float(r[n].max()) for r in runs))
        for n in ["x", *inner]
    }
    profile = get_target("ort-cpu")
    assert qdq_pass in profile.qdq_passes
    paths, bodies = {}, {}
    for label, passes in ((name, (qdq_pass,)), ("plain", ())):
        plan = QuantPlan(profile=dataclasses.replace(profile, qdq_passes=passes), ranges=dict(ranges))
        paths[label] = tmp_path / f"{label}.onnx"
        bodies[label] = write_qdq_model(model, plan, paths[label])
        apply_qdq_passes(paths[label], plan.profile, bodies[label])
    return paths, bodies


def test_align_channels_pads_groups_exactly_and_keeps_every_conv_fused(tmp_path):
    """ort-cpu's ``align_channels``: the depthwise Conv's 24-channel group grows to 32 with zero
    channels, the SE bottleneck (6, no depthwise) and the group that reaches the graph output (12)
    keep theirs; onnxruntime computes the same outputs (both
    optimisation levels) and still fuses every Conv into QLinearConv (it checks bias scale = input
    scale x filter scale, which the padded channels keep)."""
    import onnxruntime as ort

    model = _channel_model()
    rng = np.random.default_rng(9)
    xs = [rng.normal(size=(1, 3, 12, 20)).astype(np.float32) for _ in range(3)]
    paths, bodies = _ort_cpu_with_and_without(model, "align_channels", xs, tmp_path, "aligned")
    record = bodies["aligned"]["graph_passes"]["align_channels"]
    widths = sorted((r["channels"], r["padded_to"]) for r in record["rewrites"].values())
    assert widths == [(24, 32)]  # the SE bottleneck (6) has no depthwise Conv: left as it is
    aligned = onnx.load(str(paths["aligned"]))
    inits = {i.name: numpy_helper.to_array(i) for i in aligned.graph.initializer}
    dw = next(n for n in aligned.graph.node if n.name == "dw")
    assert next(a.i for a in dw.attribute if a.name == "group") == 32
    shapes = sorted(v.shape for k, v in inits.items() if v.ndim == 4)
    assert {(32, 1, 3, 3), (6, 32, 1, 1), (32, 6, 1, 1), (16, 32, 1, 1), (12, 16, 1, 1)} <= set(shapes)
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        cpu = ["CPUExecutionProvider"]
        run = {k: ort.InferenceSession(str(p), so, providers=cpu) for k, p in paths.items()}
        for x in xs:
            got = {k: sess.run(None, {"x": x})[0] for k, sess in run.items()}
            np.testing.assert_array_equal(got["aligned"], got["plain"])
    assert _fused_convs(paths["aligned"]) == _fused_convs(paths["plain"]) == Counter(QLinearConv=6)


def _fpn_model() -> onnx.ModelProto:
    """A DB-style neck: a top map upsampled by 2 into an Add with a lateral Conv, that sum upsampled by
    2 again, the top upsampled by 4, both into a Concat and a last Conv (nearest, floor, asymmetric)."""
    from onnx import helper

    rng = np.random.default_rng(11)
    inits = {
        "w1": rng.normal(0, 0.3, (8, 3, 3, 3)),
        "w2": rng.normal(0, 0.3, (8, 8, 3, 3)),
        "wl": rng.normal(0, 0.3, (8, 8, 1, 1)),
        "wo": rng.normal(0, 0.3, (4, 16, 1, 1)),
        "by2": [1, 1, 2, 2],
        "by4": [1, 1, 4, 4],
        "roi": np.zeros(0),
    }
    nearest = {"mode": "nearest", "nearest_mode": "floor", "coordinate_transformation_mode": "asymmetric"}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["a"], ["ar"], name="r1"),
        helper.make_node("Conv", ["ar", "w2"], ["top"], name="c2", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Conv", ["ar", "wl"], ["lat"], name="lateral"),
        helper.make_node("Resize", ["top", "roi", "by2"], ["up"], name="up2", **nearest),
        helper.make_node("Add", ["lat", "up"], ["sum"], name="add"),
        helper.make_node("Resize", ["sum", "roi", "by2"], ["sum_up"], name="sum_up2", **nearest),
        helper.make_node("Resize", ["top", "roi", "by4"], ["top_up"], name="top_up4", **nearest),
        helper.make_node("Concat", ["sum_up", "top_up"], ["cat"], name="cat", axis=1),
        helper.make_node("Conv", ["cat", "wo"], ["y"], name="out"),
    ]
    return _xy_model("fpn", nodes, inits, [1, 3, 32, 48], [1, 4, 32, 48])


def test_nhwc_upsample_keeps_the_integers_and_leaves_no_transpose_in_onnxruntime(tmp_path):
    """ort-cpu's ``nhwc_upsample``: every nearest Resize becomes an integer Expand (the Add after the
    first one runs in NHWC, the upsample of its output reads those bytes); onnxruntime computes the
    same integers at every optimisation level, and its optimised graph keeps no more Transposes than
    the plain model's (its NHWC layout cancels all the pass wrote)."""
    import onnxruntime as ort

    model = _fpn_model()
    rng = np.random.default_rng(12)
    xs = [rng.normal(size=(1, 3, 32, 48)).astype(np.float32) for _ in range(3)]
    paths, bodies = _ort_cpu_with_and_without(model, "nhwc_upsample", xs, tmp_path, "nhwc")
    record = bodies["nhwc"]["graph_passes"]["nhwc_upsample"]["rewrites"]
    assert {r["node"]: (r["factor"], r["nhwc_add"]) for r in record.values()} == {
        "up2": (2, True), "sum_up2": (2, False), "top_up4": (4, False),
    }  # fmt: skip
    written = onnx.load(str(paths["nhwc"]))
    onnx.checker.check_model(written)
    assert not [n for n in written.graph.node if n.op_type == "Resize"]
    optimised = {}
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        run = {}
        for k, p in paths.items():
            so = ort.SessionOptions()
            so.graph_optimization_level = level
            so.optimized_model_filepath = str(tmp_path / f"{k}.{int(level)}.opt.onnx")
            run[k] = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
            optimised[k] = Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
        for x in xs:
            got = {k: s.run(None, {"x": x})[0] for k, s in run.items()}
            np.testing.assert_array_equal(got["nhwc"], got["plain"])
    assert optimised["nhwc"]["Transpose"] == optimised["plain"]["Transpose"]
    assert optimised["nhwc"]["Expand"] == 3 and optimised["nhwc"]["Resize"] == 0
    assert optimised["plain"]["Resize"] == 3


def test_align_channels_leaves_a_blocked_group_and_says_why(caplog):
    """A depthwise group that a graph output reads cannot grow: the pass leaves it, and warns with
    the reason (the slow kernel path stays). The pass works on float Convs as well."""
    import logging

    import onnxruntime as ort

    from ocrquant.quantization.qdq_passes import rewrite_align_channels

    model = _channel_model()
    x = np.random.default_rng(3).normal(size=(1, 3, 12, 20)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )
    padded = onnx.ModelProto()
    padded.CopyFrom(model)
    assert [r["padded_to"] for r in rewrite_align_channels(padded).values()] == [32]
    got = ort.InferenceSession(padded.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-5)
    model.graph.output.append(onnx.helper.make_tensor_value_info("dw", onnx.TensorProto.FLOAT, None))
    with caplog.at_level(logging.WARNING, logger="ocrquant"):
        assert rewrite_align_channels(model) == {}
    assert "24-channel group of depthwise dw left as it is (a graph output)" in caplog.text


def test_keep_learned_judges_by_the_output_loss_unless_the_labels_resolve_a_fall():
    """det's rule for distill: the mean held-out output loss must fall; the label metric vetoes only a
    fall its paired 95 % interval resolves (60 images cannot resolve one box)."""
    from ocrquant.tuning.method_search import keep_learned

    lower, higher = np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 3.0])
    assert keep_learned(lower, higher, {"low": -0.02, "high": 0.01})
    assert keep_learned(lower, higher, None)
    assert not keep_learned(higher, lower, {"low": -0.02, "high": 0.01})
    assert not keep_learned(lower, lower, {"low": 0.0, "high": 0.0})
    assert not keep_learned(lower, higher, {"low": -0.03, "high": -0.001})


def test_a_float_stage_made_once_gives_the_same_model_and_is_used_only_where_its_key_matches(
    cls_model, tmp_path
):
    """``auto`` makes the float stage (prepare, HS-CLE / act_cle) once and hands it to every trial: a
    recipe given it writes the same model, byte for byte, as one that makes its own; a stage made for
    other float-stage algorithms is not used (the recipe makes its own)."""
    from ocrquant.quantization import quantize_recipe
    from ocrquant.quantization.pipeline import prepare_float_stage

    data, cls = sample_calib(), resolve_model(cls_model)
    cfg = QuantConfig(method="mse", algorithms=["act_cle"], calib_size=12, batch_size=4, progress=False,
                      cache_dir=tmp_path / "cache")  # fmt: skip
    stage = prepare_float_stage(cls, "cls", data, cfg)  # made for mse ranges, used for min_max
    assert stage.reports["act_cle"] and stage.keep_float == {} and len(stage.key) == 64
    own, given = tmp_path / "own.onnx", tmp_path / "given.onnx"
    min_max = dataclasses.replace(cfg, method="min_max")
    quantize_recipe(cls, "cls", data, own, min_max)
    quantize_recipe(cls, "cls", data, given, min_max, stage)
    assert given.read_bytes() == own.read_bytes()
    assert read_sidecar(given)["float_reference_sha256"] == stage.sha256
    plain = dataclasses.replace(cfg, algorithms=[])
    assert prepare_float_stage(cls, "cls", data, plain).key != stage.key
    quantize_recipe(cls, "cls", data, tmp_path / "plain.onnx", plain, stage)
    assert "act_cle" not in read_sidecar(tmp_path / "plain.onnx")["algorithms"]


@pytest.mark.shared
def test_tensorrt_target_reads_ppocrv3_rec(icdar: Path, tmp_path: Path) -> None:
    """The tensorrt layout (symmetric per-tensor int8 activations) on PP-LCNet rec reads nothing without
    scale migration (acc 0.0000 on 300 rec_train crops, whatever the range method); its rec default
    runs HS-CLE + hs_floor. Calibrated on 48 rec_train crops, scored on 150 others against FP32."""
    train = open_dataset(icdar / "rec_train", "rec")
    calib = Dataset(train.root, "rec", train.format, train.samples[:48])
    held = Dataset(train.root, "rec", train.format, train.samples[-150:])
    model = resolve_model("ppocrv3-rec")
    out = tmp_path / "rec.trt.onnx"
    cfg = QuantConfig(
        method="mse", target="tensorrt", calib_size=48, cache_dir=tmp_path / "c", progress=False
    )
    result = quantize(model, "rec", calib, out, cfg)
    task = build_task("rec", model)
    opts = RuntimeOptions(threads=2)
    ref = evaluate(task, create_runner(model.path, "onnxruntime", opts), held, progress=False)
    int8 = evaluate(task, create_runner(out, "onnxruntime", opts), held, progress=False)
    assert fidelity(task, int8, ref)["acc"] > 0.6
    assert int8.metrics["acc"] > ref.metrics["acc"] - 0.12, (int8.metrics, ref.metrics)
    assert {"hs_cle", "hs_floor"} <= set(result.algorithms), result.algorithms
