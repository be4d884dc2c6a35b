"""Shared fixtures. Real market data lives in ../shared/data beside the checkout (see its
PROVENANCE.md) or wherever $KLINEGYM_SHARED_DATA points; tests that need it skip without it. A
PostgreSQL server for the state store's tests is the one $KLINEGYM_TEST_POSTGRES names (.ci/run
starts one on 127.0.0.1); tests that need it skip without it."""

from __future__ import annotations

import os
import uuid
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


@pytest.fixture()
def postgres_url():
    """The URL of a new, empty database on the PostgreSQL server that ``KLINEGYM_TEST_POSTGRES``
    names (an account that may create databases), dropped afterwards; skips without that server."""
    server = os.environ.get("KLINEGYM_TEST_POSTGRES")
    if not server:
        pytest.skip("no PostgreSQL server: KLINEGYM_TEST_POSTGRES=postgresql://user:password@127.0.0.1/db")
    pytest.importorskip("psycopg")
    from sqlalchemy import create_engine, make_url

    from serving.state import store_url

    name = f"klinegym_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(store_url(server), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(store_url(server)).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.dispose()
