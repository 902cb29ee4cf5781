"""The embedded PostgreSQL runs with the settings ``ms07.embedded`` chose for it."""

from __future__ import annotations

import os
import time

import psycopg
import pytest


def test_the_embedded_postgresql_does_not_zero_fill_new_wal_segments(servers) -> None:  # type: ignore[no-untyped-def]
    if os.environ.get("MS07_TEST_DATABASE_URL"):
        pytest.skip("MS07_TEST_DATABASE_URL names a server ms07 did not configure")
    deadline = time.monotonic() + 10  # pg_reload_conf() signals the server; it applies it shortly
    while True:
        with psycopg.connect(servers.admin_url) as conn:
            setting = conn.execute("SHOW wal_init_zero").fetchone()
        if setting == ("off",) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert setting == ("off",)
    # Kept across restarts: the choice is in postgresql.auto.conf, not in a session.
    auto_conf = (servers.state_dir / "postgres" / "postgresql.auto.conf").read_text()
    assert "wal_init_zero = 'off'" in auto_conf
