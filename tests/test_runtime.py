"""Runtimes: OpenVINO agrees with onnxruntime, per-shape compile cache, QDQ rewrite, TensorRT without GPU,
missing extras, and ``bench`` numbers that make sense."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ocrquant.analysis.bench import make_inputs, run_bench
from ocrquant.data import sample_root
from ocrquant.errors import OcrQuantError
from ocrquant.runtime import RuntimeOptions, create_runner
from ocrquant.runtime.openvino import fold_constant_qdq
from ocrquant.runtime.tensorrt import NO_GPU, cuda_device_count
from tests.conftest import zoo_model_path


@pytest.fixture(scope="module")
def cls_inputs() -> list[np.ndarray]:
    return make_inputs("cls", sample_root() / "rec", (4, 3, 48, 192), count=1)


def _tiny_model(path: Path) -> Path:
    """A small real conv net, N x 3 x H x W -> N x 2, dynamic batch and size."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.normal(size=(8, 2)).astype(np.float32), "fc")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [w, fc],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _qdq_reshape_mul_model() -> onnx.ModelProto:
    """The pattern OpenVINO 2026.4 cannot compile: Mul(x, DQ(Q(Reshape(gamma, Shape-derived shape))))."""
    gamma = numpy_helper.from_array(np.linspace(-1.3, 2.1, 6).astype(np.float32), "gamma")
    shape = numpy_helper.from_array(np.array([1, 1, 6], dtype=np.int64), "shape")
    scale = numpy_helper.from_array(np.array(0.017, dtype=np.float32), "s")
    zp = numpy_helper.from_array(np.array(0, dtype=np.int8), "zp")
    nodes = [
        helper.make_node("Reshape", ["gamma", "shape"], ["g"]),
        helper.make_node("QuantizeLinear", ["g", "s", "zp"], ["gq"]),
        helper.make_node("DequantizeLinear", ["gq", "s", "zp"], ["gd"]),
        helper.make_node("Mul", ["x", "gd"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdqmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 6])],
        [gamma, shape, scale, zp],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_fold_constant_qdq_keeps_the_arithmetic() -> None:
    model = _qdq_reshape_mul_model()
    x = np.random.default_rng(1).normal(size=(2, 4, 6)).astype(np.float32)
    before = _ort(model, x)
    assert len(fold_constant_qdq(model)) == 1
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    onnx.checker.check_model(model)
    np.testing.assert_array_equal(_ort(model, x), before)  # the fake-quantized gamma, exactly
    assert fold_constant_qdq(model) == {}  # idempotent


def test_openvino_matches_onnxruntime_on_cls(cls_model: Path, cls_inputs: list[np.ndarray]) -> None:
    pytest.importorskip("openvino", reason="openvino extra not installed (pip install 'ocrquant[openvino]')")
    x = cls_inputs[0]
    ref = create_runner(cls_model, "onnxruntime", RuntimeOptions(threads=2)).run({"x": x})[0]
    got = create_runner(cls_model, "openvino", RuntimeOptions(threads=2)).run({"x": x})[0]
    assert got.shape == ref.shape == (4, 2)
    np.testing.assert_allclose(got, ref, atol=2e-4)
    assert (got.argmax(1) == ref.argmax(1)).all()


def test_openvino_compiles_once_per_shape(cls_model: Path, cls_inputs: list[np.ndarray]) -> None:
    pytest.importorskip("openvino", reason="openvino extra not installed (pip install 'ocrquant[openvino]')")
    runner = create_runner(cls_model, "openvino", RuntimeOptions(threads=2))
    x4 = cls_inputs[0]
    x1 = x4[:1]
    a = runner.run({"x": x4})[0]
    runner.run({"x": x1})
    assert runner.compile_count == 2
    b = runner.run({"x": x4})[0]
    runner.run({"x": x1})
    assert runner.compile_count == 2  # reused, not recompiled
    assert sorted(runner.cached_shapes) == [((1, 3, 48, 192),), ((4, 3, 48, 192),)]
    np.testing.assert_array_equal(a, b)


def test_openvino_runs_new_shapes_on_one_dynamic_model_past_the_cache(
    cls_model: Path, cls_inputs: list[np.ndarray]
) -> None:
    """Past ``max_cached_shapes`` distinct shapes (a pipeline's rec widths), a new shape compiles no
    static model of its own: one dynamic compile serves every later shape, with the same outputs."""
    pytest.importorskip("openvino", reason="openvino extra not installed (pip install 'ocrquant[openvino]')")
    runner = create_runner(cls_model, "openvino", RuntimeOptions(threads=2))
    runner.max_cached_shapes = 2
    x4 = cls_inputs[0]
    for x in (x4[:1], x4[:2]):  # two static compiles fill the cache
        runner.run({"x": x})
    got = [runner.run({"x": x})[0] for x in (x4[:3], x4, x4[:3])]
    assert runner.compile_count == 3 and len(runner.cached_shapes) == 2
    fresh = create_runner(cls_model, "openvino", RuntimeOptions(threads=2))
    np.testing.assert_allclose(got[1], fresh.run({"x": x4})[0], atol=1e-4)
    np.testing.assert_array_equal(got[0], got[2])


def test_openvino_missing_extra_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ocrquant.runtime.openvino as ovmod

    monkeypatch.setattr(ovmod, "ov", None)
    with pytest.raises(OcrQuantError, match=r"pip install 'ocrquant\[openvino\]'"):
        create_runner(_tiny_model(tmp_path / "t.onnx"), "openvino")


@pytest.mark.skipif(cuda_device_count() > 0, reason="a CUDA GPU is present")
def test_tensorrt_without_gpu_fails_clearly(tmp_path: Path) -> None:
    model = _tiny_model(tmp_path / "t.onnx")
    with pytest.raises(OcrQuantError) as info:
        create_runner(model, "tensorrt")
    assert str(info.value) == NO_GPU
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ocrquant.cli.main",
            "bench",
            "-m",
            str(model),
            "--task",
            "cls",
            "--backend",
            "tensorrt",
            "--rounds",
            "1",
            "--no-memory",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {NO_GPU}"


def test_bench_numbers_are_sane(tmp_path: Path) -> None:
    model = _tiny_model(tmp_path / "tiny.onnx")
    res = run_bench([model], "cls", backends=["onnxruntime"], rounds=5, warmup=1, progress=False)
    assert {r.shape for r in res.rows} == {"48x192 b1", "48x192 b8"}
    for r in res.rows:
        assert 0 < r.min_ms <= r.median_ms <= r.p90_ms
        assert r.runs == 5 * 2  # rounds x inputs per shape
        assert r.throughput_ips > 0 and r.size_mb > 0
        assert r.speedup_vs_baseline == 1.0  # the only case is the baseline
        assert r.rss_peak_mb is not None and r.rss_peak_mb > 0 and r.rss_delta_mb is not None
    b1, b8 = sorted(res.rows, key=lambda r: r.shape)
    assert b1.input_shape == [1, 3, 48, 192] and b8.input_shape == [8, 3, 48, 192]


def test_bench_rejects_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(OcrQuantError, match="bad.onnx"):
        run_bench([bad], "cls", progress=False)
    with pytest.raises(OcrQuantError, match="unknown backend"):
        run_bench([_tiny_model(tmp_path / "t.onnx")], "cls", backends=["nope"], progress=False)
    # a model of another task: refused by name (zoo) or by its declared output (a bare file)
    rec_file = zoo_model_path("ppocrv3-rec")
    with pytest.raises(OcrQuantError, match="is a rec model, not det"):
        run_bench(["ppocrv3-rec"], "det", progress=False)
    with pytest.raises(OcrQuantError, match="is this a det model"):
        run_bench([rec_file], "det", progress=False)
