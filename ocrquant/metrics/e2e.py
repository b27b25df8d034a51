"""End-to-end (detect + read) metric: the ICDAR2015 Robust Reading end-to-end protocol.

Decisions, each taken from the competition's own evaluation script (Challenge 4, task 4.4,
``script.py`` with ``WORD_SPOTTING=False``), written afresh:

* **Matching** is the detection protocol of :mod:`ocrquant.metrics.det_iou`, unchanged: polygons
  matched one-to-one (greedy, GT outer loop) at IoU > 0.5, detections lying mostly (area precision
  > 0.5) inside a don't-care (``###``) region removed before matching. A detection that matches a GT
  word by IoU but reads it wrongly still *uses up* that GT word and itself: it is a false positive and
  the word a miss, exactly as the script's ``gtRectMat``/``detRectMat`` flags work.
* **Text comparison** (``transcription_match`` with ``ONLY_REMOVE_FIRST_LAST_CHARACTER=True``): both
  strings are upper-cased; they match when equal, or when the GT equals the detection after dropping
  *one* special character from the GT's start, its end, or both. Special characters are the
  script's ``SPECIAL_CHARACTERS``: ``! ? . : , * " ( ) · [ ] / '``. Only the GT is trimmed, and only
  one character per side: GT ``EXIT.`` is matched by ``exit`` and by ``EXIT.``; GT ``"SALE"`` by
  ``SALE``, ``SALE"``, ``"SALE`` and ``"SALE"``; GT ``EXIT..`` not by ``EXIT``; and a detection
  ``EXIT.`` does not match GT ``EXIT``. Nothing else is normalised (inner punctuation, spaces and
  accents count).
* **All non-``###`` words are care words.** The length >= 3 and alphabet rules
  (``include_in_dictionary``) belong to the *word spotting* task only, so they are not applied.
* **Lexicons** (no lexicon, or strong / weak / generic): the competition scores with the same script
  whatever the lexicon and leaves lexicon use to the method. Here a recognised word is replaced by the
  lexicon word at the smallest Levenshtein distance (rapidfuzz ``process.extractOne``; ties go to the
  word listed first), the rule spotting papers use (e.g. Mask TextSpotter's ``find_match_word``).
  Which words are snapped (``snap=``): the competition's vocabularies hold only letter words (its
  word-spotting rule: at least 3 characters, letters and ``-``), yet numbers, prices and codes
  (``20029``, ``$20``, ``50%``) stay *care* words in the end-to-end task. ``snap="letters"`` (default)
  snaps every recognised word that contains at least one letter and keeps the others (no lexicon word
  can match them); ``snap="all"`` snaps every word, the plain published rule. Snapping whole
  recognised strings also rescues a detector that merged two words ("Reserved Seating" snaps to
  ``RESERVED``), which is why snapping words with stray digits or spaces is kept.
  ``max_distance`` (default None: no cap) keeps words further than that from every lexicon word as
  recognised. The strong lexicon is per image (``strong_per_image/voc_<image stem>.txt``), so
  strong snapping needs the image key in the prediction (``prediction["key"]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

from ocrquant.data.types import DetTarget
from ocrquant.errors import OcrQuantError
from ocrquant.metrics.base import Metric
from ocrquant.metrics.det_iou import evaluate_image, hmean, target_ignore

#: the Robust Reading script's SPECIAL_CHARACTERS (allowed at a GT word's first / last position)
SPECIAL_CHARACTERS = "!?.:,*\"()·[]/'"

#: lexicon kinds and where each lives inside an ICDAR2015 ``vocabularies/`` folder
SNAP_MODES = ("letters", "all")

LEXICON_FILES: dict[str, str] = {
    "strong": "strong_per_image",
    "weak": "weak_ch4_test_vocabulary.txt",
    "generic": "generic_vocabulary.txt",
}


def transcription_match(gt: str, det: str, special: str = SPECIAL_CHARACTERS) -> bool:
    """Whether a recognised word ``det`` reads GT word ``gt`` (case-insensitive; one special character
    may be dropped from each end of the GT, never from the detection). See the module docstring."""
    gt, det = gt.upper(), det.upper()
    if gt == det:
        return True
    if not gt:
        return False
    head, tail = gt[0] in special, gt[-1] in special
    return (head and gt[1:] == det) or (tail and gt[:-1] == det) or (head and tail and gt[1:-1] == det)


def _read_words(path: Path) -> list[str]:
    """Upper-cased unique words of a lexicon file, in file order; a BOM, CRLF, blank lines and the
    generic vocabulary's ``#`` comment header are skipped."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise OcrQuantError(f"lexicon is not UTF-8 text ({exc.reason} at byte {exc.start})", path) from None
    except OSError as exc:
        raise OcrQuantError(f"cannot read lexicon ({exc.strerror})", path) from None
    words = dict.fromkeys(
        line.strip().upper() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )
    if not words:
        raise OcrQuantError("lexicon has no words", path)
    return list(words)


@dataclass
class Lexicon:
    """A lexicon to snap recognised words to: one word list for the set (weak, generic) or one per
    image (strong, read lazily from ``per_image_dir``)."""

    name: str
    words: list[str] | None = None
    per_image_dir: Path | None = None
    max_distance: int | None = None
    snap_mode: str = "letters"  # "letters" | "all" (see the module docstring)
    _per_image: dict[str, list[str]] = field(default_factory=dict, repr=False)
    _cache: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)

    def words_for(self, key: str | None) -> list[str]:
        """The word list that applies to image ``key`` (e.g. ``img_12.jpg``)."""
        if self.per_image_dir is None:
            assert self.words is not None
            return self.words
        if not key:
            raise OcrQuantError(f"the {self.name} lexicon is per image; the prediction carries no image key")
        stem = Path(key).stem
        if stem not in self._per_image:
            path = self.per_image_dir / f"voc_{stem}.txt"
            if not path.is_file():
                raise OcrQuantError(f"no {self.name} lexicon for image {key}", path)
            self._per_image[stem] = _read_words(path)
        return self._per_image[stem]

    def __post_init__(self) -> None:
        if self.snap_mode not in SNAP_MODES:
            raise OcrQuantError(f"unknown snap mode '{self.snap_mode}' (known: {', '.join(SNAP_MODES)})")

    def snap(self, text: str, key: str | None = None) -> str:
        """The lexicon word nearest to ``text`` by edit distance (upper case), or ``text`` itself when it
        is empty, has no letter (``snap_mode="letters"``), or is further than ``max_distance`` from
        every word."""
        if not text:
            return text
        cache_key = ("" if self.per_image_dir is None else Path(key or "").stem, text)
        if cache_key in self._cache:
            return self._cache[cache_key]
        if self.snap_mode == "letters" and not any(ch.isalpha() for ch in text):
            self._cache[cache_key] = text
            return text
        query = text.upper()
        words = self.words_for(key)
        best = process.extractOne(query, words, scorer=Levenshtein.distance, score_cutoff=self.max_distance)
        snapped = best[0] if best is not None else text
        self._cache[cache_key] = snapped
        return snapped


def load_lexicon(
    kind: str, vocab_dir: str | Path, max_distance: int | None = None, snap: str = "letters"
) -> Lexicon:
    """Open the ``kind`` lexicon (strong, weak, generic) of an ICDAR2015 ``vocabularies/`` folder."""
    if kind not in LEXICON_FILES:
        raise OcrQuantError(f"unknown lexicon '{kind}' (known: none, {', '.join(LEXICON_FILES)})")
    path = Path(vocab_dir) / LEXICON_FILES[kind]
    if kind == "strong":
        if not path.is_dir():
            raise OcrQuantError("strong lexicon folder not found", path)
        return Lexicon(kind, per_image_dir=path, max_distance=max_distance, snap_mode=snap)
    if not path.is_file():
        raise OcrQuantError(f"{kind} lexicon not found", path)
    return Lexicon(kind, words=_read_words(path), max_distance=max_distance, snap_mode=snap)


class E2EMetric(Metric):
    """ICDAR2015 end-to-end precision / recall / hmean, optionally through a lexicon (see the module
    docstring). Prediction: ``{"polygons": [...], "texts": [...], "key": image key (strong lexicon)}``;
    target: :class:`DetTarget` whose ``texts`` are the GT transcriptions."""

    primary = "hmean"

    def __init__(
        self, lexicon: Lexicon | None = None, iou_thresh: float = 0.5, area_precision_thresh: float = 0.5
    ) -> None:
        self.lexicon = lexicon
        self.iou_thresh = iou_thresh
        self.area_precision_thresh = area_precision_thresh
        self.correct = 0
        self.det_matched = 0
        self.gt_care = 0
        self.det_care = 0
        self.images = 0

    def snap_texts(self, texts: Sequence[str], key: str | None) -> list[str]:
        """Recognised texts as the metric compares them (snapped when a lexicon is set)."""
        if self.lexicon is None:
            return list(texts)
        return [self.lexicon.snap(t, key) for t in texts]

    def update(self, prediction: dict[str, Any], target: DetTarget) -> dict[str, Any]:
        polygons = prediction.get("polygons", [])
        texts = prediction.get("texts", [])
        if len(texts) != len(polygons):
            raise ValueError(f"prediction has {len(polygons)} polygons but {len(texts)} texts")
        texts = self.snap_texts(texts, prediction.get("key"))
        res = evaluate_image(
            target.polygons, target_ignore(target), polygons,
            iou_thresh=self.iou_thresh, area_precision_thresh=self.area_precision_thresh,
        )  # fmt: skip
        words = []
        correct = 0
        for g, d in res.pairs:
            ok = transcription_match(target.texts[g], texts[d])
            correct += int(ok)
            words.append({"gt": g, "det": d, "gt_text": target.texts[g], "text": texts[d], "correct": ok})
        self.correct += correct
        self.det_matched += res.matched
        self.gt_care += res.gt_care
        self.det_care += res.det_care
        self.images += 1
        if res.gt_care == 0:
            precision, recall = (0.0 if res.det_care else 1.0), 1.0
        else:
            precision, recall = (correct / res.det_care if res.det_care else 0.0), correct / res.gt_care
        return {
            "precision": precision,
            "recall": recall,
            "hmean": hmean(precision, recall),
            "correct": correct,
            "det_matched": res.matched,
            "gt_care": res.gt_care,
            "det_care": res.det_care,
            "words": words,
        }

    def result(self) -> dict[str, float]:
        """Totals over the set (0/0 gives 0); ``det_*`` are the detection-only figures of the same run."""
        precision = self.correct / self.det_care if self.det_care else 0.0
        recall = self.correct / self.gt_care if self.gt_care else 0.0
        det_p = self.det_matched / self.det_care if self.det_care else 0.0
        det_r = self.det_matched / self.gt_care if self.gt_care else 0.0
        return {
            "precision": precision,
            "recall": recall,
            "hmean": hmean(precision, recall),
            "correct": self.correct,
            "gt_care": self.gt_care,
            "det_care": self.det_care,
            "images": self.images,
            "det_precision": det_p,
            "det_recall": det_r,
            "det_hmean": hmean(det_p, det_r),
        }


__all__ = [
    "E2EMetric",
    "LEXICON_FILES",
    "Lexicon",
    "SNAP_MODES",
    "SPECIAL_CHARACTERS",
    "load_lexicon",
    "transcription_match",
]
