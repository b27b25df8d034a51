"""Test oracle: RapidOCR's port of PaddleOCR's own pre/post-processing, loaded from the zoo wheel.

The module files are read out of the pinned, hash-checked ``rapidocr-onnxruntime==1.2.3`` wheel and
executed as standalone modules (without the package's ``__init__``), so the tests compare ocrquant
against an implementation we did not write, with nothing extra to install but ``six``.
"""

from __future__ import annotations

import types
import zipfile
from functools import cache

from ocrquant.zoo.fetch import fetch_wheel
from ocrquant.zoo.registry import RAPIDOCR_ORT


@cache
def load(member: str) -> types.ModuleType:
    wheel = fetch_wheel(RAPIDOCR_ORT)
    with zipfile.ZipFile(wheel) as zf:
        source = zf.read(member).decode("utf-8")
    module = types.ModuleType(member.replace("/", "_").removesuffix(".py"))
    exec(compile(source, member, "exec"), module.__dict__)  # noqa: S102  (hash-pinned test oracle)
    return module


def det_utils() -> types.ModuleType:
    return load("rapidocr_onnxruntime/ch_ppocr_v3_det/utils.py")


def rec_utils() -> types.ModuleType:
    return load("rapidocr_onnxruntime/ch_ppocr_v3_rec/utils.py")
