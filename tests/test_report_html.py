"""``report.html`` rendered by a real browser: ``ocrquant run`` on the embedded sample, then headless
Chromium (Debian's ``chromium``, which ``.ci/run`` installs) prints the DOM it built and takes a
screenshot. Skipped, with the reason, where Chromium is absent."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium on this machine (Debian: apt-get install chromium; .ci/run installs it)")


def _browser(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip


def test_run_report_renders_in_chromium_with_table_plots_and_gallery(tmp_path: Path) -> None:
    from tests.conftest import zoo_model_path

    binary = _chromium()
    model = tmp_path / "rec.onnx"  # a copy outside the zoo: the run does not publish into the INT8 cache
    shutil.copy(zoo_model_path("ppocrv3-rec"), model)
    out = tmp_path / "run"
    # npu-pow2 (per-tensor power-of-two scales, no equalisation) changes PP-OCRv3 rec's readings of the
    # 48 sample crops, so there is a gallery to show
    cmd = [sys.executable, "-m", "ocrquant.cli.main", "run", "--task", "rec", "-m", f"rec={model}",
           "--target", "npu-pow2", "--method", "min_max", "--keep-all-int8", "--calib-size", "8",
           "--latency-inputs", "2", "-o", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    page = out / "report.html"
    assert page.is_file()
    assert max(len(line) for line in done.stdout.splitlines()) <= 120  # narrow terminal tables

    dom = _browser(binary, tmp_path / "profile1", "--dump-dom", page.as_uri()).stdout
    assert re.search(r'<table id="results">.*?<td>rec \(rec, acc\)</td>', dom, re.S)
    assert dom.count('class="plot snr"') == 1 and dom.count('class="plot speed"') == 1
    disagree = int(re.search(r"Where FP32 and INT8 disagree: (\d+) of 48", dom).group(1))
    assert disagree > 0
    assert dom.count('class="sample"') == min(disagree, 6)
    assert "data:image/png;base64," in dom and "http" not in dom.split("<body>", 1)[1]  # self-contained

    shot = tmp_path / "report.png"
    _browser(binary, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1280,1600", page.as_uri())
    import cv2

    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (1600, 1280)
    assert image.std() > 10  # the page drew something, not a blank canvas


def test_a_det_sample_differs_only_where_the_metric_sees_it() -> None:
    """A box moved by a pixel is no disagreement; a box lost, or one that no longer matches the
    truth, is."""
    from ocrquant.report.figures import differs

    fp32 = {
        "prediction": {"polygons": [[[0, 0], [10, 0], [10, 5], [0, 5]]]},
        "figures": {"det_care": 1, "matched": 1},
    }
    moved = {
        "prediction": {"polygons": [[[1, 0], [11, 0], [11, 5], [1, 5]]]},
        "figures": {"det_care": 1, "matched": 1},
    }
    unmatched = {**moved, "figures": {"det_care": 1, "matched": 0}}
    assert not differs("det", fp32, moved) and differs("det", fp32, unmatched)
    assert differs("rec", {"prediction": {"text": "a"}}, {"prediction": {"text": "b"}})
    assert not differs("cls", {"prediction": {"label": "0"}}, {"prediction": {"label": "0"}})
