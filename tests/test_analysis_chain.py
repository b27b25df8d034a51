"""The analysis chain (compare, dump --quant, simulate --compare, sensitivity) through the CLI on the
INT8 model ocrquant writes for each zoo model users analyse: PP-OCRv3 det / cls / rec, PP-OCRv4 det /
rec (Paddle, converted) and CRAFT (torch, converted). Each model is quantized with the target's default
algorithms (HS-CLE / act_cle, HardSwish floor: the graph rewrites analysis has to see through) on a
few embedded sample images, and every command runs on one to four samples."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from ocrquant.data import sample_root
from ocrquant.quantization.targets import cpu_has_vnni
from tests.conftest import zoo_model_path

#: zoo model, task, embedded sample folder, input shape for the commands (CRAFT: a smaller image, as
#: its VGG16 runs at full resolution)
MODELS = [
    ("ppocrv3-det", "det", "det", None),
    ("ppocrv3-cls", "cls", "rec", None),
    ("ppocrv3-rec", "rec", "rec", None),
    ("ppocrv4-det", "det", "det", None),
    ("ppocrv4-rec", "rec", "rec", None),
    ("craft-mlt25k", "det-craft", "det", ("1", "3", "128", "256")),
]


#: the model output's cosine to float on the one compared image, by whether the host has VNNI: without
#: it the host profile narrows the weights (pair-safe int8 or a 7-bit grid, so that onnxruntime's
#: saturating AVX2 kernels stay exact), and min_max ranges from 4 images cost more. Measured on PP-OCRv4
#: rec, the lowest of the six: 0.861 on a 2-core AVX2 EPYC (Zen 3); above 0.9 with VNNI.
MIN_OUTPUT_COSINE = {True: 0.9, False: 0.8}


def _cli(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "ocrquant.cli.main", *args], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"ocrquant {' '.join(args)}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def _compiles_in_plain_openvino(model, shape) -> None:
    """The file ocrquant writes loads in OpenVINO as users call it, with no ocrquant rewrite
    (a constant Q/DQ pair behind a Reshape, as on PP-OCRv3 rec's LayerNorm gamma, stops it unless
    folded: ``ocrquant.onnx_qdq``)."""
    try:
        import openvino as ov
    except ImportError:
        return  # the openvino extra is optional; CI installs it
    core = ov.Core()
    net = core.read_model(str(model))
    if shape:
        net.reshape([int(d) for d in shape])
    core.compile_model(net, "CPU")


@pytest.mark.parametrize(("name", "task", "folder", "shape"), MODELS, ids=[m[0] for m in MODELS])
def test_analysis_commands_run_on_the_int8_model_ocrquant_writes(name, task, folder, shape, tmp_path):
    float_model = zoo_model_path(name)
    data = str(sample_root() / folder)
    int8 = tmp_path / f"{name}.int8.onnx"
    shape_args = ["--input-shape", *shape] if shape else []
    _cli("quantize", "-m", name, "--task", task, "--calib-data", data, "--method", "min_max",
         "--calib-size", "4", "--keep-all-int8", "-o", str(int8), *shape_args)  # fmt: skip
    assert int8.is_file() and float_model.is_file()
    _compiles_in_plain_openvino(int8, shape)

    # compare: every matched layer has a finite cosine; the model output agrees with float
    report = tmp_path / "compare.json"
    _cli("compare", name, str(int8), "-d", data, "--task", task, "--limit", "1", "--mode", "cumulative",
         "--json", str(report), *shape_args)  # fmt: skip
    layers = json.loads(report.read_text())["layers"]
    assert len(layers) >= 10
    assert all(math.isfinite(r["cosine"]) for r in layers)
    deepest = max(layers, key=lambda r: r["depth"])
    assert deepest["cosine"] > MIN_OUTPUT_COSINE[cpu_has_vnni()], deepest

    # dump --quant: float and INT8 tensors of the chosen layers, paired, on disk
    dump = tmp_path / "dump"
    _cli("dump", "-m", name, "--quant", str(int8), "-o", str(dump), "-d", data, "--task", task,
         "--limit", "1", "--layers", "Conv", "--float16", *shape_args)  # fmt: skip
    pairs = json.loads((dump / "index.json").read_text())["pairs"]
    # (a Conv feeding a Relu has no INT8 tensor of its own: CRAFT keeps 4 pairs)
    assert len(pairs) >= 3 and all(p["op_type"].startswith("Conv") for p in pairs)  # "Conv/dw" too
    assert all(
        any((dump / p["float_dir"]).iterdir()) and any((dump / p["quant_dir"]).iterdir()) for p in pairs
    )

    # compare --from-dump reads that dump back
    from_dump = tmp_path / "from_dump.json"
    _cli("compare", name, str(int8), "--from-dump", str(dump), "--json", str(from_dump))
    assert len(json.loads(from_dump.read_text())["layers"]) >= len(pairs)

    # simulate --compare: the integer simulator, with onnxruntime's arithmetic (ties to even, float32
    # requantisation), reproduces onnxruntime. (Its default, an accelerator's half-away rounding and
    # fixed-point multipliers, differs by a step at ties; on a deep model with small ranges those steps
    # compound: PP-OCRv4 rec with the pair-safe weights of a host without VNNI reads cosine 0.911 that
    # way and 0.998 this way.) Which of onnxruntime's two executions it matches depends on the host:
    # without VNNI the fused kernels saturate pairs of products and the simulator matches the file's
    # unfused semantics (ort-reference); on a 2-core Zen 4 EPYC onnxruntime's own fused and unfused runs
    # of this PP-OCRv4 rec file agree only at cosine 0.984, and the simulator matches the fused integer
    # kernels (ort-optimized) at 0.9999.
    sim = tmp_path / "sim.json"
    _cli("simulate", "-m", str(int8), "-d", data, "--task", task, "--limit", "1", "--compare",
         "--rounding", "half_even", "--requant", "float32", "--json", str(sim), *shape_args)  # fmt: skip
    outputs = json.loads(sim.read_text())["outputs"]
    assert outputs
    for tensor in {o["name"] for o in outputs}:
        ort_runs = {o["runtime"]: o["cosine"] for o in outputs if o["name"] == tensor}
        assert max(ort_runs.get("ort-reference", 0.0), ort_runs.get("ort-optimized", 0.0)) > 0.99, outputs

    # sensitivity: every quantized layer ranked once, each with a measured output SNR
    sens = tmp_path / "sens.json"
    _cli("sensitivity", "-m", name, "--task", task, "--calib-data", data, "--calib-size", "3",
         "--val-size", "1", "--snr-samples", "1", "--no-metric", "--method", "min_max", "--latency", "none",
         "--json", str(sens), "--top", "3", *shape_args)  # fmt: skip
    result = json.loads(sens.read_text())
    assert result["ranking"] and len(set(result["ranking"])) == len(result["ranking"]) == len(result["rows"])
    assert sum(r["snr_db"] is not None for r in result["rows"]) >= len(result["rows"]) // 2
