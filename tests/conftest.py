"""Shared fixtures: the embedded sample, the ../shared data (skipped with a reason when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "icdar2015"


@pytest.fixture(scope="session")
def icdar() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"ICDAR2015 data not found at {SHARED}")
    return SHARED
