"""The torch backend runs the original CRAFT network and agrees with its ONNX export."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from ocrquant.runtime import RuntimeOptions, create_runner  # noqa: E402
from ocrquant.zoo.resolve import resolve_model  # noqa: E402


def test_torch_backend_matches_onnx_export() -> None:
    model = resolve_model("craft-mlt25k")
    x = np.random.default_rng(0).normal(size=(1, 3, 96, 128)).astype(np.float32)
    torch_out = create_runner(model.path_for("torch"), "torch", RuntimeOptions(threads=2)).run({"x": x})
    ort = create_runner(model.path, "onnxruntime", RuntimeOptions(threads=2))
    ort_out = ort.run({ort.input_names[0]: x})
    assert torch_out[0].shape == ort_out[0].shape == (1, 48, 64, 2)
    np.testing.assert_allclose(torch_out[0], ort_out[0], atol=1e-4)


def test_torch_backend_refuses_onnx_only_model() -> None:
    from ocrquant.errors import OcrQuantError

    with pytest.raises(OcrQuantError, match="torch"):
        resolve_model("ppocrv3-det").path_for("torch")
