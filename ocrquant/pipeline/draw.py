"""Draw OCR results: the image with its boxes on the left, the recognised text in place on the right.

The layout follows PaddleOCR's ``draw_ocr_box_txt`` (side by side, one colour per line) so pictures
compare with what users of that tool know. The recogniser's dictionary is mostly Chinese, so the font
must cover CJK: :func:`find_font` takes ``$OCRQUANT_FONT``, then a CJK font installed on the system
(Debian: ``apt-get install fonts-noto-cjk`` or ``fonts-wqy-microhei``), then any font fontconfig says
covers Chinese, and falls back to matplotlib's DejaVu Sans (Latin, Greek, Cyrillic; CJK characters
then show as boxes) so drawing never needs a download.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import cv2
import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ocrquant.errors import OcrQuantError
from ocrquant.fileio import write_bytes_atomic
from ocrquant.pipeline.core import OcrLine

log = logging.getLogger("ocrquant")

#: CJK-capable fonts at the paths common systems install them to, best first
KNOWN_CJK_FONTS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",  # Debian/Ubuntu fonts-noto-cjk
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",  # Arch
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",  # Fedora
    "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",  # fonts-wqy-microhei
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",  # fonts-wqy-zenhei
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",  # fonts-droid-fallback
    "/usr/share/fonts/truetype/arphic/uming.ttc",  # fonts-arphic-uming
    "/System/Library/Fonts/PingFang.ttc",  # macOS
    "/System/Library/Fonts/STHeiti Light.ttc",
    "/Library/Fonts/Arial Unicode.ttf",
    "C:/Windows/Fonts/msyh.ttc",  # Windows
    "C:/Windows/Fonts/simhei.ttf",
)


def _fontconfig_cjk() -> str | None:
    """A font fontconfig knows to cover Chinese, if fontconfig is installed."""
    if shutil.which("fc-list") is None:
        return None
    try:
        out = subprocess.run(
            ["fc-list", ":lang=zh", "file"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    files = sorted(line.split(":")[0].strip() for line in out.splitlines() if line.strip())
    return files[0] if files else None


def _fallback_font() -> str:
    return str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf")


@lru_cache(maxsize=1)
def find_font() -> str:
    """Path of the font to draw recognised text with (see the module docstring for the order)."""
    env = os.environ.get("OCRQUANT_FONT")
    if env:
        if not Path(env).is_file():
            raise OcrQuantError("font file named by $OCRQUANT_FONT not found", env)
        return env
    for path in KNOWN_CJK_FONTS:
        if Path(path).is_file():
            return path
    found = _fontconfig_cjk()
    if found:
        return found
    log.info("no CJK font found; drawing text with DejaVu Sans (install fonts-noto-cjk for Chinese)")
    return _fallback_font()


def _load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    try:
        return ImageFont.truetype(path, size)
    except OSError:
        raise OcrQuantError("cannot load font", path) from None


def _colour(i: int) -> tuple[int, int, int]:
    """A distinct, reproducible colour per line (golden-angle hue steps)."""
    hue = int((i * 137.508) % 180)
    rgb = cv2.cvtColor(np.uint8([[[hue, 200, 230]]]), cv2.COLOR_HSV2RGB)[0, 0]
    return int(rgb[0]), int(rgb[1]), int(rgb[2])


def _fit_font(
    draw: ImageDraw.ImageDraw, text: str, font_path: str, box_w: float, box_h: float
) -> ImageFont.FreeTypeFont:
    """The largest font (at most 80% of the box height) whose rendering of ``text`` fits the box width."""
    size = max(int(box_h * 0.8), 8)
    font = _load_font(font_path, size)
    width = draw.textlength(text, font=font) if text else 0
    if width > box_w > 0:
        size = max(int(size * box_w / width), 8)
        font = _load_font(font_path, size)
    return font


def draw_ocr(
    image: np.ndarray, lines: Sequence[OcrLine], font_path: str | None = None, alpha: float = 0.5
) -> np.ndarray:
    """Side-by-side picture (RGB uint8, twice the image width): left, the image with each line's box
    filled translucently and outlined; right, a white page with the boxes and their text in place.
    Vertical boxes (more than twice as tall as wide) get their characters stacked top to bottom."""
    font_path = font_path or find_font()
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    h, w = rgb.shape[:2]
    left = Image.fromarray(rgb)
    overlay = left.copy()
    right = Image.new("RGB", (w, h), (255, 255, 255))
    draw_overlay, draw_right = ImageDraw.Draw(overlay), ImageDraw.Draw(right)
    for i, line in enumerate(lines):
        colour = _colour(i)
        pts = [(float(x), float(y)) for x, y in line.polygon]
        draw_overlay.polygon(pts, fill=colour)
        draw_right.polygon(pts, outline=colour, width=2)
        arr = np.asarray(pts, dtype=np.float32)
        box_w = float(np.linalg.norm(arr[0] - arr[1])) if len(arr) >= 2 else 0.0
        box_h = float(np.linalg.norm(arr[0] - arr[-1])) if len(arr) >= 2 else 0.0
        x0, y0 = float(arr[:, 0].min()), float(arr[:, 1].min())
        if box_h > 2 * box_w and len(line.text) > 1:
            font = _load_font(font_path, max(int(box_w * 0.8), 8))
            step = font.size
            for k, ch in enumerate(line.text):
                draw_right.text((x0 + 2, y0 + k * step), ch, fill=(0, 0, 0), font=font)
        else:
            font = _fit_font(draw_right, line.text, font_path, box_w, box_h)
            draw_right.text((x0 + 2, y0), line.text, fill=(0, 0, 0), font=font)
    blended = Image.blend(left, overlay, alpha)
    draw_left = ImageDraw.Draw(blended)
    for i, line in enumerate(lines):
        draw_left.polygon([(float(x), float(y)) for x, y in line.polygon], outline=_colour(i), width=2)
    canvas = Image.new("RGB", (w * 2, h), (255, 255, 255))
    canvas.paste(blended, (0, 0))
    canvas.paste(right, (w, 0))
    return np.asarray(canvas)


def save_drawing(
    path: str | Path, image: np.ndarray, lines: Sequence[OcrLine], font_path: str | None = None
) -> Path:
    """Draw and write the picture atomically (format from the suffix: .png, .jpg, ...)."""

    path = Path(path)
    picture = cv2.cvtColor(draw_ocr(image, lines, font_path), cv2.COLOR_RGB2BGR)
    suffix = path.suffix.lower() or ".png"
    ok, buf = cv2.imencode(suffix, picture)
    if not ok:
        raise OcrQuantError(f"cannot encode a picture as '{suffix}' (use .png or .jpg)", path)
    write_bytes_atomic(path, buf.tobytes())
    return path
