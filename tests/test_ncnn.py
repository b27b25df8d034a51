"""ncnn backend: pnnx conversion equivalence, INT8 table + model written by ocrquant, clear errors.

Real model (the zoo's PP-OCRv3 det) and real images (the embedded sample); skipped with a reason when
the ``ncnn`` extra (ncnn + pnnx) is not installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ocrquant.errors import OcrQuantError
from tests.conftest import zoo_model_path

ncnn = pytest.importorskip("ncnn", reason="ncnn not installed (pip install 'ocrquant[ncnn]')")


def _pnnx_or_skip() -> None:
    from ocrquant.frontends.ncnn_export import pnnx_executable

    try:
        pnnx_executable()
    except OcrQuantError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def det_ncnn(tmp_path_factory: pytest.TempPathFactory):
    """PP-OCRv3 det converted once (ONNX route, with the Resize fix) into a temporary directory."""
    from ocrquant.frontends.ncnn_export import convert_onnx

    _pnnx_or_skip()
    work = tmp_path_factory.mktemp("ncnn")
    onnx_path = work / "det.onnx"
    shutil.copyfile(zoo_model_path("ppocrv3-det"), onnx_path)
    return onnx_path, convert_onnx(onnx_path)


def _det_inputs(n: int, start: int = 0) -> list[np.ndarray]:
    from ocrquant.data import load_image, open_dataset, sample_root
    from ocrquant.tasks import get_task_class, make_config
    from ocrquant.tasks.det import DetConfig

    task = get_task_class("det")(make_config(DetConfig, {"limit_side_len": 480}))  # small: fast on 2 cores
    samples = open_dataset(sample_root() / "det", "det").samples[start : start + n]
    return [task.preprocess([load_image(s)]).inputs for s in samples]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_fp32_conversion_matches_onnxruntime(det_ncnn) -> None:
    """The converted model computes what onnxruntime computes, at a size pnnx never saw."""
    from ocrquant.runtime import create_runner

    onnx_path, model = det_ncnn
    assert model.param == onnx_path.with_suffix(".ncnn.param") and model.bin.is_file()
    assert model.info["route"] == "onnx" and model.info["onnx_fixes"] == {"resize_roi": 6}
    assert [(b.name, b.blob) for b in model.inputs] == [("x", "in0")]
    assert [(b.name, b.blob, b.rank) for b in model.outputs] == [("sigmoid_0.tmp_0", "out0", 4)]
    assert model.info["max_abs_diff_vs_onnxruntime"] <= 1e-3
    layer_types = {line.split()[0] for line in model.param.read_text().splitlines()[2:]}
    assert "Interp" in layer_types and "Resize" not in layer_types

    ort_runner = create_runner(onnx_path, "onnxruntime")
    ncnn_runner = create_runner(onnx_path, "ncnn")  # the cached conversion, found by the ONNX path
    assert ncnn_runner.input_names == ["x"] and ncnn_runner.output_names == ["sigmoid_0.tmp_0"]
    x = _det_inputs(1, start=6)[0]
    ref, got = ort_runner.run({"x": x})[0], ncnn_runner.run({"x": x})[0]
    assert got.shape == ref.shape
    assert float(np.abs(got - ref).max()) < 1e-3


def test_without_resize_fix_pnnx_leaves_a_layer_ncnn_refuses(det_ncnn, tmp_path: Path, monkeypatch) -> None:
    """Why the fix exists: pnnx passes paddle2onnx's Resize (non-empty roi) through, ncnn has no such layer;
    the error names the op instead of failing at load time."""
    from ocrquant.frontends import ncnn_export

    monkeypatch.setattr(ncnn_export, "ONNX_FIXES", {})
    with pytest.raises(OcrQuantError, match=r"layer types ncnn cannot run: Resize"):
        ncnn_export.convert_onnx(det_ncnn[0], tmp_path / "raw.ncnn.param")
    assert not (tmp_path / "raw.ncnn.param").exists()


@pytest.fixture(scope="module")
def det_int8(det_ncnn, tmp_path_factory: pytest.TempPathFactory):
    """INT8 model + table from ocrquant's calibration (2 real images), every layer ncnn can run INT8
    quantized (``int8_layers="all"``, what ncnn2int8 does)."""
    from ocrquant.quantization.ncnn_int8 import NcnnQuantConfig, quantize_ncnn

    inputs = _det_inputs(2)
    out = tmp_path_factory.mktemp("int8") / "det.int8.ncnn.param"
    config = NcnnQuantConfig(calib_size=2, int8_layers="all", progress=False)
    return quantize_ncnn(det_ncnn[1].param, lambda: iter(inputs), out, config)


def test_int8_model_loads_in_ncnn_and_tracks_fp32(det_ncnn, det_int8) -> None:
    from ocrquant.runtime import create_runner

    result = det_int8
    float_runner = create_runner(det_ncnn[1].param, "ncnn")
    int8_runner = create_runner(result.param, "ncnn")
    for x in _det_inputs(2, start=4):  # images not used for calibration
        a, b = float_runner.run({"x": x})[0], int8_runner.run({"x": x})[0]
        assert a.shape == b.shape
        assert _cosine(a, b) > 0.9
    # what ncnn2int8 writes: int8_scale_term on every conv / dw conv / fc, Deconvolution kept float
    lines = {ln.split()[1]: ln for ln in result.param.read_text().splitlines()[2:]}
    for name in result.quantized_layers:
        assert any(f" 8={t}" in lines[name] for t in (1, 2, 101, 102))
    assert result.float_weight_layers and all(
        lines[n].startswith("Deconvolution") for n in result.float_weight_layers
    )
    assert result.requantized_layers
    size = result.param.stat().st_size + result.bin.stat().st_size
    assert size <= 0.35 * det_ncnn[1].size_bytes()


def test_only_layers_faster_in_int8_are_quantized(det_ncnn, det_int8, tmp_path: Path) -> None:
    """``int8_layers="faster"``: each layer is timed alone in float and INT8 on its real input; exactly
    the layers measured faster get INT8, the others stay float (and are named in the sidecar), and the
    model still loads in ncnn and tracks the float model."""
    import json

    from ocrquant.quantization.ncnn_int8 import NcnnQuantConfig, quantize_ncnn
    from ocrquant.runtime import create_runner

    inputs = _det_inputs(2)
    out = tmp_path / "det.fast.ncnn.param"
    result = quantize_ncnn(
        det_ncnn[1].param, lambda: iter(inputs), out, NcnnQuantConfig(calib_size=2, progress=False)
    )
    speed = json.loads(out.with_suffix(".json").read_text())["speed"]
    timings = {t["layer"]: t for t in speed["layer_timings"]}
    assert set(timings) == set(det_int8.quantized_layers)  # every candidate was timed
    assert all(t["float_ms"] > 0 and t["int8_ms"] > 0 and t["pairs"] >= 5 for t in timings.values())
    faster = {n for n, t in timings.items() if t["int8_ms"] <= (1 - speed["min_gain"]) * t["float_ms"]}
    assert set(result.quantized_layers) == faster
    assert set(result.slower_in_int8) == set(timings) - faster == set(speed["slower_in_int8"])
    assert set(result.slower_in_int8) <= set(result.float_weight_layers)
    lines = {ln.split()[1]: ln for ln in out.read_text().splitlines()[2:]}
    assert all(" 8=" not in lines[n] for n in result.slower_in_int8)
    float_runner, runner = create_runner(det_ncnn[1].param, "ncnn"), create_runner(out, "ncnn")
    for x in _det_inputs(2, start=4):
        assert _cosine(float_runner.run({"x": x})[0], runner.run({"x": x})[0]) > 0.9


def test_table_format_and_weight_scales(det_ncnn, det_int8) -> None:
    """One ``<layer>_param_0`` line of 127/absmax per output channel and one ``<layer> scale`` line each."""
    from ocrquant.frontends.ncnn_format import Int8Table, NcnnParam, read_bin

    table = Int8Table.read(det_int8.table)
    assert set(table.weights) == set(table.activations) == set(det_int8.quantized_layers)
    param = NcnnParam.read(det_ncnn[1].param)
    weights = {r.layer: r.values for r in read_bin(param, det_ncnn[1].bin) if r.role == "weight"}
    for ly in param.layers:
        if ly.name in table.weights:
            rows = ly.geti(7, 1) if ly.type == "ConvolutionDepthWise" else ly.geti(0)
            absmax = np.abs(weights[ly.name].reshape(rows, -1)).max(axis=1)
            expect = np.where(absmax > 0, 127.0 / np.maximum(absmax, 1e-30), 1.0)  # all-zero channel: 1
            np.testing.assert_allclose(table.weights[ly.name], expect, rtol=1e-6)
            assert table.activations[ly.name] > 0
    text = det_int8.table.read_text().splitlines()
    first = text[0].split()
    assert first[0].endswith("_param_0") and len(first) > 2
    assert all(len(ln.split()) == 2 for ln in text if "_param_" not in ln.split()[0])


def test_table_missing_blob_is_a_one_line_error(det_ncnn, det_int8, tmp_path: Path) -> None:
    from ocrquant.quantization.ncnn_int8 import quantize_with_table

    lines = det_int8.table.read_text().splitlines()
    victim = next(ln.split()[0] for ln in lines if "_param_" not in ln.split()[0])
    broken = tmp_path / "broken.table"
    broken.write_text("\n".join(ln for ln in lines if ln.split()[0] != victim) + "\n")
    out = tmp_path / "x.int8.ncnn.param"
    with pytest.raises(OcrQuantError) as err:
        quantize_with_table(det_ncnn[1].param, broken, out)
    msg = str(err.value)
    assert "\n" not in msg and str(broken) in msg and f"'{victim}'" in msg and "bottom blob scale" in msg
    assert not out.exists() and not out.with_suffix(".bin").exists()

    unknown = tmp_path / "unknown.table"
    unknown.write_text(det_int8.table.read_text() + "no_such_layer 12.5\n")
    with pytest.raises(OcrQuantError, match="names layer 'no_such_layer'"):
        quantize_with_table(det_ncnn[1].param, unknown, out)


def test_bin_not_matching_param_is_a_clear_error(det_ncnn, tmp_path: Path) -> None:
    from ocrquant.frontends.ncnn_format import NcnnParam, read_bin

    short = tmp_path / "short.bin"
    short.write_bytes(det_ncnn[1].bin.read_bytes()[:-100])
    with pytest.raises(OcrQuantError, match="does the .bin match the .param"):
        read_bin(NcnnParam.read(det_ncnn[1].param), short)


def test_missing_extra_keeps_import_working() -> None:
    """Without the ncnn package, ocrquant still imports and the backend says how to install it."""
    code = (
        "import sys; sys.modules['ncnn'] = None\n"
        "from ocrquant.runtime import BACKENDS, create_runner\n"
        "from ocrquant.errors import OcrQuantError\n"
        "assert 'ncnn' in BACKENDS\n"
        "try:\n    create_runner('m.onnx', 'ncnn')\nexcept OcrQuantError as e:\n    print(e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'ocrquant[ncnn]'" in proc.stdout


def test_run_with_ncnn_backend_writes_the_report(tmp_path: Path) -> None:
    """``ocrquant run --backend ncnn``: the seed's table for det from ncnn float and INT8 models."""
    import json

    from ocrquant.workflow import RunConfig, run

    _pnnx_or_skip()
    rows = run(
        RunConfig(
            tasks=["det"],
            models={"det": "ppocrv3-det"},
            backend="ncnn",
            limit=3,
            latency_inputs=2,
            out_dir=tmp_path,
        )
    )
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["settings"]["backend"] == "ncnn" and len(rows) == len(report["rows"]) == 1
    row = rows[0]
    assert row.test_size == 3 and row.float_ms > 0 and row.int8_ms > 0
    assert row.details["backend"] == "ncnn" and row.details["int8 model"].endswith(".int8.ncnn.param")
    assert abs(row.float_metric - row.details["onnxruntime float metric"]) < 1e-3
    assert row.int8_mb < row.float_mb
    assert "ppocrv3-det" in (tmp_path / "report.md").read_text()
    with pytest.raises(OcrQuantError, match="no e2e"):
        run(RunConfig(tasks=["det", "e2e"], backend="ncnn", out_dir=tmp_path / "e2e"))
