"""Text recognition with CTC, as PaddleOCR's ``predict_rec`` runs it.

Width rule: every image of a batch is resized to height 48 keeping its ratio and right-padded to
``int(48 * max(320/48, widest w/h in the batch))``; so results depend on the batch, which is why
``batch_size=1`` is the reference setting and batches are formed from width-sorted crops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ocrquant.errors import OcrQuantError
from ocrquant.metrics.rec import RecMetric
from ocrquant.tasks.base import Batch, Metric, Task, register_task
from ocrquant.tasks.cls import resize_norm_pad


@dataclass
class RecConfig:
    image_shape: tuple[int, int, int] = (3, 48, 320)
    char_dict: str | None = None  # a dictionary file; default: the model's ONNX metadata "character"
    use_space_char: bool = True
    #: a model with a fixed input width (a static-shape deployment) gets every crop at exactly that
    #: width, long ones squeezed, as such deployments do; otherwise PaddleOCR widens the batch to its
    #: longest crop. Set from the model's declared input by ``build_task``.
    fixed_width: bool = False


def load_charset(metadata: dict[str, str], char_dict: str | None, use_space_char: bool = True) -> list[str]:
    """CTC labels: ['blank'] + dictionary + [' '] (PaddleOCR's CTCLabelDecode)."""
    if char_dict:
        path = Path(char_dict)
        if not path.is_file():
            raise OcrQuantError("character dictionary not found", path)
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except UnicodeDecodeError:
            raise OcrQuantError("character dictionary is not UTF-8 text", path) from None
    elif "character" in metadata:
        lines = metadata["character"].splitlines()
    else:
        raise OcrQuantError("rec model has no 'character' metadata; pass --char-dict FILE")
    chars = list(lines)
    if use_space_char:
        chars.append(" ")
    return ["blank", *chars]


def ctc_greedy_decode(probs: np.ndarray, charset: list[str]) -> list[dict[str, Any]]:
    """argmax per step, collapse repeats, drop blank (index 0); score = mean prob of kept steps."""
    idx = probs.argmax(axis=2)
    prob = probs.max(axis=2)
    out = []
    for row_idx, row_prob in zip(idx, prob, strict=True):
        keep = np.ones(len(row_idx), dtype=bool)
        keep[1:] = row_idx[1:] != row_idx[:-1]
        keep &= row_idx != 0
        text = "".join(charset[i] for i in row_idx[keep])
        score = float(row_prob[keep].mean()) if keep.any() else 0.0
        out.append({"text": text, "score": round(score, 6)})
    return out


@register_task("rec")
class RecTask(Task):
    """CTC text recogniser (PP-OCR rec models)."""

    Config = RecConfig
    output_layout = (None, None, None)
    output_layout_text = "N x T x classes"

    def __init__(self, config: RecConfig | None = None, model_metadata: dict[str, str] | None = None) -> None:
        super().__init__(config, model_metadata)
        self._charset: list[str] | None = None

    @property
    def charset(self) -> list[str]:
        if self._charset is None:
            self._charset = load_charset(
                self.model_metadata, self.config.char_dict, self.config.use_space_char
            )
        return self._charset

    def preprocess(self, images: list[np.ndarray]) -> Batch:
        _, h, w = self.config.image_shape
        max_ratio = max([w / h] + [im.shape[1] / float(im.shape[0]) for im in images])
        width = w if self.config.fixed_width else int(h * max_ratio)
        return Batch(np.stack([resize_norm_pad(im, h, width) for im in images]), [{} for _ in images])

    def check_output_shape(self, shape: Sequence[int | str | None] | None, source: object) -> None:
        """Also refuse a dictionary that does not fit the declared class count, before anything runs:
        PP-OCRv6 rec has 18710 classes, v3/v4's dictionary gives 6625, and decoding one with the other
        reads garbage rather than failing."""
        super().check_output_shape(shape, source)
        classes = shape[-1] if shape else None
        if isinstance(classes, int) and classes > 0 and self._has_dictionary():
            self._check_classes(classes, source)

    def _has_dictionary(self) -> bool:
        return bool(self.config.char_dict) or "character" in self.model_metadata

    def _check_classes(self, classes: int, source: object = None) -> None:
        if classes != len(self.charset):
            where = f"--char-dict {self.config.char_dict}" if self.config.char_dict else "its metadata"
            raise OcrQuantError(
                f"rec model has {classes} output classes but the dictionary ({where}) gives "
                f"{len(self.charset)} (blank + characters + space); pass the model's own --char-dict",
                source,
            )

    def postprocess(self, outputs: list[np.ndarray], batch: Batch) -> list[dict[str, Any]]:
        probs = outputs[0]
        if probs.ndim != 3:
            raise OcrQuantError(f"rec model output should be N x T x C, got shape {list(probs.shape)}")
        self._check_classes(probs.shape[2])
        return ctc_greedy_decode(probs, self.charset)

    def new_metric(self) -> Metric:
        return RecMetric()

    def sort_key(self, image: np.ndarray) -> float:
        return image.shape[1] / float(image.shape[0])
