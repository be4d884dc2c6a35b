"""Shared fixtures. Real market data lives in ../shared/data beside the checkout (see its
PROVENANCE.md) or wherever $KLINEGYM_SHARED_DATA points; tests that need it skip without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(
    os.environ.get("KLINEGYM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of real Binance data; skips the test when it is absent."""
    if not (SHARED_DATA / "PROVENANCE.md").exists():
        pytest.skip(f"real market data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture()
def store_root(tmp_path: Path) -> Path:
    return tmp_path / "store"
