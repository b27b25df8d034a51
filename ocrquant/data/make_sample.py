"""Regenerate the embedded sample: ``python -m ocrquant.data.make_sample``.

The sample is committed as package data so that it is byte-stable for users; this script is how it was
made, so it can be remade (for example after changing the generator) rather than edited by hand.
"""

from __future__ import annotations

from pathlib import Path

from ocrquant.data import sample_root
from ocrquant.data.synth import generate

SAMPLE_SEED = 2015
SAMPLE_DET = 8
SAMPLE_REC = 48


def make_sample(dest: str | Path | None = None) -> Path:
    """Write the 8-image det / 48-crop rec sample (seed 2015) to ``dest`` (default: the package folder)."""
    return generate(
        dest or sample_root(),
        n_det=SAMPLE_DET,
        n_rec=SAMPLE_REC,
        seed=SAMPLE_SEED,
        jpeg_quality=85,
        overwrite=True,
    )


if __name__ == "__main__":
    root = make_sample()
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    print(f"wrote {root} ({total / 1024:.0f} KiB)")
