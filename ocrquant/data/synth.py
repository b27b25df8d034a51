"""A seeded generator of small, labelled OCR sets in the ICDAR 2015 layouts.

Why synthetic data at all: ocrquant must demo, test and smoke-check a quantized model without the user
downloading ICDAR first, and the embedded sample (``ocrquant/data/sample``) must be redistributable. So
the words are rendered here with a real TrueType font that ships with matplotlib (DejaVu, free licence),
and the ground truth is exact by construction: every word's quadrilateral is its ink box pushed through
the same homography that placed the word.

The output uses the *same* file formats as the real sets (``det/images/img_N.jpg`` +
``det/gt/gt_img_N.txt``; ``rec/images/word_N.png`` + ``rec/gt.txt``, with the BOM and CRLF of the
original competition files), so the same readers, metrics and reports run on both. Images must stay
legible to a real recogniser (PP-OCRv3 reads them), hence mostly dark-on-light text, glyphs 18-40 px
tall in scenes and 24-40 px in crops, and only mild noise and blur.

Every image draws from its own generator seeded by ``(seed, kind, index)``: the same seed gives
identical files, and image 3 is the same whether 8 or 80 images are generated.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ocrquant.errors import OcrQuantError

# Everyday words of signs, shops and streets (what incidental scene text says), written for this module.
WORDS = (
    "open closed exit entrance push pull stop sale new free hot cold coffee tea bread bakery pizza "
    "burger menu today street road avenue park station train bus taxi airport hotel bank market shop "
    "store fresh fruit food drink water milk books music cinema theatre museum gallery library school "
    "office police hospital pharmacy doctor dental repair service parking garage toilet lobby floor "
    "level gate platform ticket tickets welcome thanks please only staff private danger warning caution "
    "keep left right ahead north south east west city centre center river bridge square garden house "
    "house home family kitchen table chair lamp window door light night day week month year sunday "
    "monday friday saturday morning evening price total cash card credit discount offer special limited "
    "delivery order online phone mobile email internet wifi power energy battery green red blue yellow "
    "orange white black silver golden royal grand central national global world united express quick "
    "smart happy lucky star moon sun sky cloud rain snow winter summer spring autumn fashion beauty salon "
    "spa fitness sport games toys gifts flowers jewelry watch shoes bags travel tours island beach hill "
    "valley lake forest tower plaza mall outlet factory studio design digital photo print copy mail "
    "post restaurant kitchen noodle rice chicken seafood grill bar cafe juice sweet cake cream chocolate"
).split()

DEFAULT_FONT_NAMES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf")
DET_SIZE = (640, 360)
IGNORE_TEXT = "###"
BOM = "\ufeff"


# --------------------------------------------------------------------------------------------- words


def random_word(rng: np.random.Generator) -> str:
    """A word, a number or a short code, in lower, Title or UPPER case, like scene text mixes them."""
    roll = rng.random()
    if roll < 0.72:
        word = str(rng.choice(WORDS))
        case = rng.random()
        return word.upper() if case < 0.3 else word.title() if case < 0.65 else word
    if roll < 0.9:
        digits = int(rng.integers(1, 6)) if rng.random() < 0.2 else int(rng.integers(2, 6))
        return str(int(rng.integers(10 ** (digits - 1) if digits > 1 else 0, 10**digits)))
    letters = "".join(rng.choice(list("ABCDEFGHJKLMNPRSTUVWXYZ"), size=int(rng.integers(1, 3))))
    return letters + str(int(rng.integers(1, 1000)))


# --------------------------------------------------------------------------------------------- fonts


def default_fonts() -> list[Path]:
    """DejaVu faces bundled with matplotlib: real TrueType fonts available offline on every install."""
    ttf_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    fonts = [ttf_dir / name for name in DEFAULT_FONT_NAMES if (ttf_dir / name).is_file()]
    if not fonts:
        raise OcrQuantError("matplotlib's DejaVu fonts are missing; pass a .ttf with font=", ttf_dir)
    return fonts


@functools.lru_cache(maxsize=256)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    try:
        return ImageFont.truetype(path, size)
    except OSError as exc:
        raise OcrQuantError(f"cannot load TrueType font ({exc})", path) from None


def _resolve_fonts(font: str | Path | None) -> list[str]:
    if font is None:
        return [str(p) for p in default_fonts()]
    path = Path(font)
    if not path.is_file():
        raise OcrQuantError("font file not found", path)
    _font(str(path), 20)  # fail now, naming the font, rather than mid-way through a set
    return [str(path)]


# -------------------------------------------------------------------------------------------- drawing


@dataclass
class _Glyphs:
    """A word rendered as coverage (0..1) on a padded canvas, with its ink box on that canvas."""

    alpha: np.ndarray
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)


def _render(text: str, font_path: str, size: int, pad: int) -> _Glyphs:
    font = _font(font_path, size)
    left, top, right, bottom = font.getbbox(text)
    width, height = right - left + 2 * pad, bottom - top + 2 * pad
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).text((pad - left, pad - top), text, fill=255, font=font)
    alpha = np.asarray(canvas, dtype=np.float32) / 255.0
    return _Glyphs(alpha, _ink_box(alpha))


def _ink_box(alpha: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(alpha > 0.2)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _luma(rgb: np.ndarray) -> float:
    return float(np.dot(rgb, [0.299, 0.587, 0.114]))


def _colour(rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    """A random RGB colour whose luminance lies in [lo, hi] (so contrast is guaranteed, hue is free)."""
    for _ in range(100):
        rgb = rng.uniform(0, 255, size=3)
        if lo <= _luma(rgb) <= hi:
            return rgb.astype(np.float32)
    return np.full(3, (lo + hi) / 2, dtype=np.float32)


def _background(rng: np.random.Generator, width: int, height: int, light: bool) -> np.ndarray:
    """Gradient between two colours plus low-frequency texture: a surface, not a flat page."""
    lo, hi = (150, 240) if light else (15, 90)
    # Real surfaces are rarely fully saturated: pull both colours part-way towards grey.
    c0, c1 = (_desaturate(_colour(rng, lo, hi), rng.uniform(0.3, 0.85)) for _ in range(2))
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = xx * np.cos(angle) + yy * np.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
    image = c0 + (c1 - c0) * ramp[..., None]
    cell = int(rng.integers(12, 40))
    coarse = rng.standard_normal((height // cell + 2, width // cell + 2, 3)).astype(np.float32)
    coarse = coarse[..., :1] + 0.3 * coarse  # mostly shading, a little colour
    texture = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return image + texture * rng.uniform(3, 10)


def _desaturate(rgb: np.ndarray, keep: float) -> np.ndarray:
    """Blend ``rgb`` towards its own grey level, keeping ``keep`` of the saturation (luminance unchanged)."""
    return (_luma(rgb) + (rgb - _luma(rgb)) * keep).astype(np.float32)


def _finish(
    image: np.ndarray, rng: np.random.Generator, max_blur: float, noise: tuple[float, float]
) -> np.ndarray:
    """Camera-like softening and sensor noise; returns BGR uint8 for OpenCV's encoders."""
    if rng.random() < 0.5:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, max_blur))
    image = image + rng.normal(0, rng.uniform(*noise), size=image.shape).astype(np.float32)
    rgb = np.clip(image, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb[..., ::-1])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return cv2.perspectiveTransform(points.reshape(-1, 1, 2).astype(np.float64), matrix).reshape(-1, 2)


def _box_corners(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Corners clockwise from top-left, the ICDAR order."""
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


# ---------------------------------------------------------------------------------------- det scenes


@dataclass
class SceneWord:
    """One annotated region of a synthetic scene: its quadrilateral (ICDAR order) and transcription."""

    quad: list[list[int]]
    text: str

    @property
    def ignore(self) -> bool:
        return self.text == IGNORE_TEXT


@dataclass
class Scene:
    image: np.ndarray  # BGR uint8
    words: list[SceneWord] = field(default_factory=list)


def _word_transform(rng: np.random.Generator, glyphs: _Glyphs) -> np.ndarray:
    """Homography of the word canvas about its centre: straight, rotated or perspective-warped."""
    h, w = glyphs.alpha.shape
    centre = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]], dtype=np.float64)
    style = rng.random()
    if style < 0.45:  # straight, at most a slight tilt
        angle = rng.uniform(-3, 3)
        warp = np.eye(3)
    elif style < 0.75:  # rotated
        angle = rng.choice([-1, 1]) * rng.uniform(8, 30)
        warp = np.eye(3)
    else:  # perspective: one side farther away, as on a wall seen at an angle
        angle = rng.uniform(-8, 8)
        x0, y0, x1, y1 = 0.0, 0.0, float(w), float(h)
        shrink = rng.uniform(0.1, 0.25) * h
        src = _box_corners(x0, y0, x1, y1).astype(np.float32)
        dst = src.copy()
        if rng.random() < 0.5:
            dst[1, 1] += shrink
            dst[2, 1] -= shrink
        else:
            dst[0, 1] += shrink
            dst[3, 1] -= shrink
        dst[:, 0] *= rng.uniform(0.85, 1.0)
        half = np.array([w / 2, h / 2], dtype=np.float32)
        warp = cv2.getPerspectiveTransform(src - half, dst - half).astype(np.float64)
    theta = np.deg2rad(angle)
    rotate = np.array(
        [[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]], dtype=np.float64
    )
    return rotate @ warp @ centre


def _place(
    rng: np.random.Generator, outline: np.ndarray, occupied: np.ndarray, margin: int
) -> tuple[float, float] | None:
    """A translation that puts ``outline`` (centred coordinates) inside the image on free ground."""
    height, width = occupied.shape
    lo, hi = outline.min(axis=0), outline.max(axis=0)
    x_range = (margin - lo[0], width - margin - hi[0])
    y_range = (margin - lo[1], height - margin - hi[1])
    if x_range[0] >= x_range[1] or y_range[0] >= y_range[1]:
        return None
    for _ in range(30):
        tx, ty = rng.uniform(*x_range), rng.uniform(*y_range)
        footprint = np.zeros_like(occupied)
        cv2.fillPoly(footprint, [np.round(outline + [tx, ty]).astype(np.int32)], 1)
        footprint = cv2.dilate(footprint, np.ones((9, 9), np.uint8))
        if not (footprint & occupied).any():
            occupied |= footprint
            return tx, ty
    return None


def _paste(image: np.ndarray, alpha: np.ndarray, matrix: np.ndarray, colour: np.ndarray) -> None:
    height, width = image.shape[:2]
    warped = cv2.warpPerspective(alpha, matrix, (width, height), flags=cv2.INTER_LINEAR, borderValue=0)
    image *= 1 - warped[..., None]
    image += warped[..., None] * colour


def _clutter(rng: np.random.Generator, image: np.ndarray) -> None:
    """Faint shapes (poles, windows, stains) so the background is not trivially separable from text."""
    height, width = image.shape[:2]
    for _ in range(int(rng.integers(3, 8))):
        layer = np.zeros((height, width), np.float32)
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        kind = rng.random()
        if kind < 0.4:
            cv2.rectangle(
                layer, (x, y), (x + int(rng.integers(30, 200)), y + int(rng.integers(20, 120))), 1.0, -1
            )
        elif kind < 0.7:
            axes = (int(rng.integers(10, 80)), int(rng.integers(10, 80)))
            cv2.ellipse(layer, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        else:
            end = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.line(layer, (x, y), end, 1.0, int(rng.integers(2, 9)))
        layer = cv2.GaussianBlur(layer, (0, 0), 1.5) * rng.uniform(0.15, 0.4)
        image *= 1 - layer[..., None]
        image += layer[..., None] * _colour(rng, 60, 230)


def render_scene(
    rng: np.random.Generator, fonts: list[str], size: tuple[int, int] = DET_SIZE, n_words: int | None = None
) -> Scene:
    """A scene-like image with several words, some on sign plates, and a few don't-care regions."""
    width, height = size
    image = _background(rng, width, height, light=rng.random() < 0.8)
    base_luma = _luma(image.reshape(-1, 3).mean(axis=0))
    _clutter(rng, image)
    occupied = np.zeros((height, width), np.uint8)
    scene_words: list[SceneWord] = []
    wanted = n_words if n_words is not None else int(rng.integers(4, 8))
    plans = [False] * wanted + [True] * int(rng.integers(1, 3))  # True: a don't-care region
    for dont_care in plans:
        text = random_word(rng)
        font_path = str(rng.choice(fonts))
        # DejaVu's cap height is ~0.73 em, so these sizes give 18-40 px tall glyphs.
        size_px = int(rng.integers(9, 14)) if dont_care else int(rng.integers(25, 55))
        glyphs = _render(text, font_path, size_px, pad=size_px)
        matrix = _word_transform(rng, glyphs)
        x0, y0, x1, y1 = glyphs.box
        ink = _box_corners(x0 - 1, y0 - 1, x1 + 1, y1 + 1)
        plate = None
        if not dont_care and rng.random() < 0.35:
            grow = 0.3 * (y1 - y0)
            plate = _box_corners(x0 - grow * 1.5, y0 - grow, x1 + grow * 1.5, y1 + grow)
        outline = _apply(matrix, plate if plate is not None else ink)
        offset = _place(rng, outline, occupied, margin=4)
        if offset is None:
            continue
        placed = np.array([[1, 0, offset[0]], [0, 1, offset[1]], [0, 0, 1]], dtype=np.float64) @ matrix
        alpha = glyphs.alpha
        if plate is not None:  # a sign board: light text on dark, or dark on white
            board = np.zeros_like(alpha)
            cv2.fillPoly(board, [np.round(plate).astype(np.int32)], 1.0)
            dark_board = rng.random() < 0.6
            _paste(image, board, placed, _colour(rng, 20, 80) if dark_board else _colour(rng, 215, 250))
            ink_colour = _colour(rng, 200, 255) if dark_board else _colour(rng, 0, 60)
        elif dont_care:  # illegible on purpose: tiny, blurred, low contrast
            alpha = cv2.GaussianBlur(alpha, (0, 0), rng.uniform(0.8, 1.6)) * rng.uniform(0.5, 0.8)
            ink_colour = _colour(rng, 0, 90) if base_luma > 128 else _colour(rng, 170, 255)
        else:
            ink_colour = _colour(rng, 0, 70) if base_luma > 128 else _colour(rng, 190, 255)
        _paste(image, alpha, placed, ink_colour)
        quad = np.round(_apply(placed, ink)).astype(int)
        quad[:, 0] = np.clip(quad[:, 0], 0, width - 1)
        quad[:, 1] = np.clip(quad[:, 1], 0, height - 1)
        scene_words.append(SceneWord(quad.tolist(), IGNORE_TEXT if dont_care else text))
    return Scene(_finish(image, rng, max_blur=0.8, noise=(1.5, 4.0)), scene_words)


# ----------------------------------------------------------------------------------------- rec crops


def render_crop(rng: np.random.Generator, text: str, fonts: list[str]) -> np.ndarray:
    """A cropped word like ICDAR's rec set: tight margins, slight tilt, either polarity. BGR uint8."""
    size_px = int(rng.integers(24, 41))  # glyphs about 18-38 px, crops about 24-48 px tall
    glyphs = _render(text, str(rng.choice(fonts)), size_px, pad=size_px)
    alpha = glyphs.alpha
    angle = rng.uniform(-4, 4)
    if abs(angle) > 0.5:
        h, w = alpha.shape
        rotation = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        alpha = cv2.warpAffine(alpha, rotation, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
    x0, y0, x1, y1 = _ink_box(alpha)
    pad_x, pad_y = int(rng.integers(2, 10)), int(rng.integers(2, 8))
    alpha = alpha[max(y0 - pad_y, 0) : y1 + pad_y, max(x0 - pad_x, 0) : x1 + pad_x]
    height, width = alpha.shape
    light = rng.random() < 0.75  # mostly dark text on a light surface
    image = _background(rng, width, height, light=light)
    ink = _colour(rng, 0, 70) if light else _colour(rng, 200, 255)
    image = image * (1 - alpha[..., None]) + alpha[..., None] * ink
    return _finish(image, rng, max_blur=0.7, noise=(1.0, 3.5))


# ------------------------------------------------------------------------------------------- writing


def _encode(image: np.ndarray, suffix: str, jpeg_quality: int) -> bytes:
    params = (
        [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if suffix == ".jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 9]
    )
    ok, data = cv2.imencode(suffix, image, params)
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 BGR
        raise RuntimeError(f"cannot encode {suffix}")
    return data.tobytes()


def _write_lines(path: Path, lines: list[str]) -> None:
    """BOM + CRLF, exactly like the original ICDAR 2015 ground-truth files."""
    path.write_bytes((BOM + "".join(line + "\r\n" for line in lines)).encode("utf-8"))


def write_set(
    out_dir: str | Path,
    n_det: int = 8,
    n_rec: int = 48,
    seed: int = 0,
    font: str | Path | None = None,
    det_size: tuple[int, int] = DET_SIZE,
    jpeg_quality: int = 85,
) -> None:
    """Write the set into ``out_dir`` in place (no atomicity; :func:`generate` wraps this)."""
    fonts = _resolve_fonts(font)
    out = Path(out_dir)
    if n_det:
        (out / "det" / "images").mkdir(parents=True, exist_ok=True)
        (out / "det" / "gt").mkdir(parents=True, exist_ok=True)
    for index in range(1, n_det + 1):
        scene = render_scene(np.random.default_rng([seed, 0, index]), fonts, det_size)
        (out / "det" / "images" / f"img_{index}.jpg").write_bytes(_encode(scene.image, ".jpg", jpeg_quality))
        lines = [",".join(str(v) for point in w.quad for v in point) + "," + w.text for w in scene.words]
        _write_lines(out / "det" / "gt" / f"gt_img_{index}.txt", lines)
    if n_rec:
        (out / "rec" / "images").mkdir(parents=True, exist_ok=True)
        labels = []
        for index in range(1, n_rec + 1):
            rng = np.random.default_rng([seed, 1, index])
            text = random_word(rng)
            name = f"word_{index}.png"
            (out / "rec" / "images" / name).write_bytes(_encode(render_crop(rng, text, fonts), ".png", 0))
            labels.append(f'{name}, "{text}"')
        _write_lines(out / "rec" / "gt.txt", labels)


def generate(
    out_dir: str | Path,
    n_det: int = 8,
    n_rec: int = 48,
    seed: int = 0,
    font: str | Path | None = None,
    det_size: tuple[int, int] = DET_SIZE,
    jpeg_quality: int = 85,
    overwrite: bool = False,
) -> Path:
    """Generate ``out_dir/det`` and ``out_dir/rec`` atomically and return ``out_dir``.

    The set is written into a temporary sibling folder and renamed into place, so an interrupted run
    never leaves a half-written set that a later evaluation would silently read. An existing non-empty
    ``out_dir`` is replaced only with ``overwrite=True``.
    """
    if n_det < 0 or n_rec < 0 or n_det + n_rec == 0:
        raise OcrQuantError(f"need a positive number of images (n_det={n_det}, n_rec={n_rec})", out_dir)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OcrQuantError("output path exists and is not a directory", out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OcrQuantError("output directory is not empty (use overwrite to replace it)", out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would otherwise become the output's permissions
        write_set(tmp, n_det, n_rec, seed, font, det_size, jpeg_quality)
        if out.exists():
            old = tmp.with_name(tmp.name + ".old")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
