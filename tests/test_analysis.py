"""Analysis: safe dump names, dump index, float<->INT8 matching, layer-wise comparison, bin I/O,
profile; on a small conv net quantized with onnxruntime's own QDQ quantizer."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from ocrquant.analysis import (
    compare_from_dump,
    compare_models,
    dump_model,
    dump_pair,
    match_tensors,
    safe_tensor_dirname,
)
from ocrquant.analysis.binio import bin2npy, npy2bin, read_bin
from ocrquant.analysis.compare import ErrorStats
from ocrquant.analysis.profile import kernel_hints, profile_model
from ocrquant.errors import OcrQuantError

SHAPE = (1, 3, 16, 16)


def _float_model() -> onnx.ModelProto:
    """Conv -> Relu -> depthwise Conv -> HardSwish-like (x * sigmoid) -> Conv 1x1 -> GAP."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 1, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b2"),
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32), "w3"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["conv1.out"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1.out"], ["relu1/out:0"], name="relu1"),
        helper.make_node(
            "Conv",
            ["relu1/out:0", "w2", "b2"],
            ["dw.out"],
            name="dw",
            group=8,
            strides=[2, 2],
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("Sigmoid", ["dw.out"], ["sig"], name="sig"),
        helper.make_node("Mul", ["dw.out", "sig"], ["swish"], name="swish"),
        helper.make_node("Conv", ["swish", "w3"], ["pw"], name="pw"),
        helper.make_node("GlobalAveragePool", ["pw"], ["y"], name="gap"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 1, 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _inputs(n: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 1, SHAPE).astype(np.float32) for _ in range(n)]


def _quantize_tiny(fp: Path, qp: Path, activation_type: QuantType) -> Path:
    """onnxruntime's own QDQ quantization of the tiny model, calibrated on 8 random inputs."""

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter({"x": x} for x in _inputs(8, seed=5))

        def get_next(self):
            return next(self.it, None)

    quantize_static(
        str(fp),
        str(qp),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=activation_type,
        weight_type=QuantType.QInt8,
    )
    return qp


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    fp = d / "tiny.onnx"
    onnx.save(_float_model(), fp)
    return fp, _quantize_tiny(fp, d / "tiny.int8.onnx", QuantType.QInt8)


def test_safe_names_are_portable_and_unique():
    assert safe_tensor_dirname(12, "conv2d_3.tmp_0") == "0012__conv2d_3.tmp_0"
    assert safe_tensor_dirname(1, "relu1/out:0") == "0001__relu1_out_0"
    assert safe_tensor_dirname(2, 'a b\\c*?<>|"') == "0002__a_b_c______"
    assert safe_tensor_dirname(3, "name.") == "0003__name"  # Windows drops trailing dots
    names = ["a:b", "a/b", "a b"]  # one safe spelling, unique through the index prefix
    dirs = [safe_tensor_dirname(i, n) for i, n in enumerate(names)]
    assert len(set(dirs)) == 3 and all(":" not in d and "/" not in d for d in dirs)
    assert len(safe_tensor_dirname(9, "x" * 500)) < 130


def test_match_tensors_pairs_float_with_qdq(models):
    fp, qp = models
    result = match_tensors(onnx.load(fp), onnx.load(qp))
    by_name = {m.float_name: m for m in result.matches}
    # the quantizer folds Relu into the Conv's output quantization: the pre-activation tensor is gone
    assert result.unmatched == ["conv1.out"]
    assert by_name["relu1/out:0"].how == "qdq" and by_name["relu1/out:0"].op_type == "Relu"
    assert by_name["dw.out"].op_type == "Conv/dw" and by_name["pw"].op_type == "Conv"
    assert by_name["dw.out"].how == "qdq" and by_name["dw.out"].quant_name != "dw.out"
    assert by_name["y"].quant_name in {o.name for o in onnx.load(qp).graph.output}
    depths = [m.float_index for m in result.matches]
    assert depths == sorted(depths)


def test_unrelated_graphs_are_rejected(models, tmp_path):
    fp, _ = models
    other = _float_model()
    for node in other.graph.node:
        node.output[0] = "other_" + node.output[0]
        node.name = "other_" + node.name
    for i, node in enumerate(other.graph.node):
        for j, inp in enumerate(node.input):
            if i and inp == other.graph.node[i - 1].output[0].replace("other_", ""):
                node.input[j] = other.graph.node[i - 1].output[0]
    with pytest.raises(OcrQuantError, match="do not correspond.*relu1/out:0"):
        match_tensors(onnx.load(fp), other)


def test_dump_pair_index_files_and_chunking(models, tmp_path):
    fp, qp = models
    xs = _inputs(2)
    index = dump_pair(fp, qp, xs, tmp_path / "d", chunk_size=3, progress=False)
    assert index["samples"] == 2 and index["unmatched"] == ["conv1.out"]
    saved = json.loads((tmp_path / "d" / "index.json").read_text())
    assert saved["pairs"] == index["pairs"]
    relu = next(p for p in index["pairs"] if p["float"] == "relu1/out:0")
    assert relu["float_dir"].endswith("__relu1_out_0")
    for p in index["pairs"]:
        for k in range(2):
            assert (tmp_path / "d" / p["float_dir"] / f"batch_{k}.npy").is_file()
            assert (tmp_path / "d" / p["quant_dir"] / f"batch_{k}.npy").is_file()
    # the dumped tensor is the real one: the float output equals a plain run of the model
    import onnxruntime as ort

    ref = ort.InferenceSession(str(fp), providers=["CPUExecutionProvider"]).run(None, {"x": xs[1]})[0]
    y = next(p for p in index["pairs"] if p["float"] == "y")
    np.testing.assert_allclose(
        np.load(tmp_path / "d" / y["float_dir"] / "batch_1.npy"), ref, rtol=1e-5, atol=1e-6
    )
    # quant dump also holds the int8 tensors (QuantizeLinear outputs)
    tensors = json.loads((tmp_path / "d" / "quant" / "tensors.json").read_text())["tensors"]
    assert any(t["dtype"] == "int8" for t in tensors)
    # chunk size does not change what is written
    one = dump_model(fp, xs[:1], tmp_path / "one", chunk_size=100, progress=False)
    assert [e.dir for e in one] == [
        e["dir"] for e in json.loads((tmp_path / "d/float/tensors.json").read_text())["tensors"]
    ]


def test_compare_modes_and_from_dump(models, tmp_path):
    fp, qp = models
    xs = _inputs(3)
    result = compare_models(fp, qp, xs, mode="both", progress=False)
    cum = {r.float_name: r for r in result.rows if r.mode == "cumulative"}
    iso = {r.float_name: r for r in result.rows if r.mode == "isolated"}
    assert set(cum) == set(iso) and "pw" in cum
    for r in result.rows:
        assert -1.0 <= r.cosine <= 1.0 + 1e-9 and r.max_abs >= r.mean_abs >= 0
    # the first layer sees the same (quantized float) input in both modes
    assert cum["relu1/out:0"].snr_db == pytest.approx(iso["relu1/out:0"].snr_db, abs=1e-6)
    # deeper layers carry earlier errors only cumulatively
    assert iso["pw"].snr_db >= cum["pw"].snr_db - 0.5
    rows = result.sorted_rows("cumulative")
    assert [r.snr_db for r in rows] == sorted(r.snr_db for r in rows)
    dump_pair(fp, qp, xs, tmp_path / "d", progress=False)
    from_dump = {r.float_name: r for r in compare_from_dump(tmp_path / "d").rows}
    for name, r in cum.items():
        assert from_dump[name].snr_db == pytest.approx(r.snr_db, rel=1e-6)
    result.to_csv(tmp_path / "c.csv")
    result.to_json(tmp_path / "c.json")
    header = (tmp_path / "c.csv").read_text().splitlines()[0]
    assert header.startswith("depth,float_name,quant_name,op_type,mode,cosine,snr_db")
    assert len(json.loads((tmp_path / "c.json").read_text())["layers"]) == len(result.rows)
    from ocrquant.analysis.plot import plot_snr

    png = plot_snr(result, tmp_path / "snr.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_reads_a_channel_padded_model_like_the_plain_one(models, tmp_path):
    """ort-cpu's ``align_channels`` widens channel groups (here conv1 -> dw, 8 -> 16 channels): both
    comparison modes and the dump route report the same figures as on the unpadded model, comparing
    the real channels only and feeding isolated mode's float tensors with zero channels added."""
    from ocrquant.quantization.qdq_passes import rewrite_align_channels

    fp, qp = models
    padded = onnx.load(str(qp))
    assert [r["padded_to"] for r in rewrite_align_channels(padded).values()] == [16]
    onnx.save(padded, str(tmp_path / "padded.onnx"))
    xs = _inputs(2)
    plain = compare_models(fp, qp, xs, mode="both", progress=False)
    wide = compare_models(fp, tmp_path / "padded.onnx", xs, mode="both", progress=False)
    rows = {(r.mode, r.float_name): r for r in wide.rows}
    assert len(rows) == len(plain.rows) and ("isolated", "dw.out") in rows
    for r in plain.rows:
        assert rows[(r.mode, r.float_name)].snr_db == pytest.approx(r.snr_db, rel=1e-6)
        assert rows[(r.mode, r.float_name)].numel == r.numel
    dump_pair(fp, tmp_path / "padded.onnx", xs, tmp_path / "d", progress=False)
    from_dump = {r.float_name: r for r in compare_from_dump(tmp_path / "d").rows}
    assert from_dump["dw.out"].snr_db == pytest.approx(rows[("cumulative", "dw.out")].snr_db, rel=1e-6)


def test_error_stats_formulas():
    s = ErrorStats()
    x = np.array([3.0, 4.0])
    s.update(x, x + np.array([0.3, -0.4]))
    assert s.snr_db == pytest.approx(10 * math.log10(25 / 0.25))
    assert s.max_abs == pytest.approx(0.4) and s.mean_abs == pytest.approx(0.35)
    same = ErrorStats()
    same.update(x, x)
    assert same.snr_db == math.inf and same.cosine == pytest.approx(1.0)


def test_bin_roundtrip_and_size_errors(tmp_path):
    a = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    np.save(tmp_path / "a.npy", a)
    shape, dtype = npy2bin(tmp_path / "a.npy", tmp_path / "a.bin")
    assert shape == [1, 2, 3, 4] and dtype == "float32" and (tmp_path / "a.bin").stat().st_size == 96
    np.testing.assert_array_equal(read_bin(tmp_path / "a.bin", shape), a)
    np.testing.assert_array_equal(bin2npy(tmp_path / "a.bin", tmp_path / "b.npy", [2, 12]), a.reshape(2, 12))
    with pytest.raises(OcrQuantError, match=r"needs 192 bytes, the file has 96 bytes"):
        read_bin(tmp_path / "a.bin", [1, 2, 3, 8])
    with pytest.raises(OcrQuantError, match="needs 24 bytes"):
        read_bin(tmp_path / "a.bin", [24], "int8")
    assert not (tmp_path / "c.npy").exists()


def test_cli_bin2npy_wrong_size_is_one_line_error(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"\0" * 10)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ocrquant.cli.main",
            "bin2npy",
            str(tmp_path / "x.bin"),
            str(tmp_path / "x.npy"),
            "--shape",
            "1,3",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "needs 12 bytes, the file has 10 bytes" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.npy").exists()


def test_profile_times_nodes_and_counts_macs(models):
    fp, qp = models
    result = profile_model(fp, _inputs(2), runs=2, optimization="disable")
    ops = {n.op_type for n in result.nodes}
    assert {"Conv", "GlobalAveragePool"} <= ops
    conv1 = next(n for n in result.nodes if n.name == "conv1")
    assert conv1.macs == 8 * 16 * 16 * 3 * 3 * 3 and conv1.params == 8 * 3 * 3 * 3 + 8
    assert result.total_macs == 8 * 256 * 27 + 8 * 64 * 9 + 4 * 64 * 8
    assert sum(n.share for n in result.nodes) == pytest.approx(1.0, rel=1e-6)
    q = profile_model(qp, _inputs(2), runs=2, optimization="disable")
    assert 0 < q.qdq_share < 1 and q.total_macs == result.total_macs
    # the 8-channel depthwise conv is named as the slow-path kernel it is; the float model gets no hint
    assert result.hints == [] and len(q.hints) == 1 and "(8; e.g. dw)" in q.hints[0]


def test_profile_names_denormal_weights_of_a_float_model():
    """A float model with denormal weights (PP-OCRv6 small det ships 255958) gets a note naming how
    many and where: the profile shows their cost on Intel cores, not the cause."""
    model = _float_model()
    w3 = next(i for i in model.graph.initializer if i.name == "w3")
    values = numpy_helper.to_array(w3).copy()
    values[0, :5] = np.finfo(np.float32).tiny / 8
    w3.CopyFrom(numpy_helper.from_array(values, "w3"))
    assert kernel_hints(_float_model()) == []
    (hint,) = kernel_hints(model)
    assert hint.startswith("5 float weights are denormal") and "5 in w3" in hint


def test_profile_in_openvino_says_which_layers_ran_in_integers(models, tmp_path):
    pytest.importorskip("openvino", reason="openvino extra not installed (pip install 'ocrquant[openvino]')")
    from ocrquant.analysis.profile import PROFILERS

    fp, _ = models
    # uint8 activations, as ocrquant's CPU targets write them: OpenVINO on an AMX Xeon runs this
    # model's convolutions in f32 when its activations are signed int8 (brgconv_avx512_f32), in
    # 8-bit integers when they are uint8 (brgconv_avx512_amx_I8); the Zen 4 ran both in integers
    qp = _quantize_tiny(fp, tmp_path / "tiny.u8.onnx", QuantType.QUInt8)
    f = PROFILERS["openvino"](fp, _inputs(2), runs=2, threads=1)
    q = PROFILERS["openvino"](qp, _inputs(2), runs=2, threads=1)
    assert f.settings["backend"] == "openvino" and sum(n.share for n in q.nodes) == pytest.approx(1.0)
    convs = [n for n in q.nodes if "Convolution" in n.op_type]
    assert convs and all(n.kernel for n in convs)
    # the QDQ model's convolutions run in 8-bit integers, the float model's in f32
    assert {n.precision for n in convs} <= {"i8", "u8"}
    assert {n.precision for n in f.nodes if "Convolution" in n.op_type} == {"f32"}


@pytest.mark.parametrize(
    "model,task,shape",
    [
        ("ppocrv3-rec", "rec", (1, 3, 48, 160)),
        ("ppocrv3-cls", "cls", (1, 3, 48, 96)),
        ("ppocrv3-det", "det", (1, 3, 320, 480)),
    ],
)
def test_input_shape_option_fixes_every_task_input(model, task, shape):
    """``--input-shape N C H W`` of the analysis commands: det takes it as a fixed resize, cls as its
    fixed input, rec as its height and minimum width (PaddleOCR's rule widens a long crop's input to
    its aspect ratio). rec said 'unknown option input_shape' before."""
    from ocrquant.cli.analysis import _inputs
    from ocrquant.data import sample_root

    _, arrays = _inputs(model, sample_root() / ("det" if task == "det" else "rec"), task, 2, shape)
    if task == "rec":
        assert all(a.shape[:3] == shape[:3] and a.shape[3] >= shape[3] for a in arrays)
    else:
        assert [a.shape for a in arrays] == [shape, shape]


def test_dump_layers_and_float16_keep_a_small_dump(models, tmp_path):
    """``--layers`` keeps the matched pairs it names and ``--float16`` halves their files: a full dump
    of one PP-OCRv3 rec crop is 292 MB."""
    fp, qp = models
    xs = _inputs(1)
    full = dump_pair(fp, qp, xs, tmp_path / "full", progress=False)
    part = dump_pair(fp, qp, xs, tmp_path / "part", progress=False, layers=["Relu"], float16=True)
    assert 0 < len(part["pairs"]) < len(full["pairs"])
    pair = part["pairs"][0]
    small = np.load(tmp_path / "part" / pair["float_dir"] / "batch_0.npy")
    big = np.load(tmp_path / "full" / pair["float_dir"] / "batch_0.npy")
    assert small.dtype == np.float16 and big.dtype == np.float32
    np.testing.assert_allclose(small.astype(np.float32), big, rtol=1e-3, atol=1e-3)
    with pytest.raises(OcrQuantError, match="selects none"):
        dump_pair(fp, qp, xs, tmp_path / "none", progress=False, layers=["NoSuchOp"])


def test_compare_uses_the_float_model_that_was_quantized(tmp_path):
    """The quantizer saves the float model it quantized (after HS-CLE's rescaling) as
    ``<stem>.float.onnx``; ``float_reference`` picks it, and against it no layer falls below 30 dB
    where the un-rescaled (only re-prepared) float model stays above: the equalisation artefacts are
    gone, and the worst layer is no worse."""
    from ocrquant.analysis.compare import compare_models
    from ocrquant.analysis.graph import float_reference
    from ocrquant.analysis.inputs import load_inputs
    from ocrquant.data import sample_root
    from ocrquant.fileio import float_reference_path, read_sidecar
    from ocrquant.quantization import QuantConfig
    from ocrquant.quantization.prepare import prepare_model
    from ocrquant.tuning import quantize
    from ocrquant.zoo.resolve import resolve_model
    from tests.conftest import sample_calib, zoo_model_path

    model = zoo_model_path("ppocrv3-cls")
    int8 = tmp_path / "cls.int8.onnx"
    cfg = QuantConfig(method="min_max", calib_size=16)
    result = quantize(resolve_model(model), "cls", sample_calib(), int8, cfg)
    assert "hs_cle" in result.algorithms and float_reference_path(int8).is_file()
    settings = read_sidecar(int8)["settings"]
    rewrites = tuple(settings["target"].get("prepare_rewrites") or ())
    prepared = tmp_path / "prepared.onnx"
    prepare_model(model, prepared, fuse_hardswish=settings["fuse_hardswish"], rewrites=rewrites)
    _, xs = load_inputs(str(model), sample_root() / "rec", "cls", 8, progress=False)
    with float_reference(model, int8) as reference:
        assert reference == float_reference_path(int8)
        saved = {r.float_name: r.snr_db for r in compare_models(reference, int8, xs, mode="cumulative").rows}
    plain = {r.float_name: r.snr_db for r in compare_models(prepared, int8, xs, mode="cumulative").rows}
    common = set(saved) & set(plain)
    assert len(common) > 100
    assert not [k for k in common if saved[k] < 30 <= plain[k]]
    assert min(saved.values()) >= min(plain.values())
