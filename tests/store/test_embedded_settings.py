"""The embedded PostgreSQL runs with the settings ``ms07.embedded`` chose for it."""

from __future__ import annotations

import time

import psycopg
import pytest

from ms07 import embedded


def test_the_embedded_postgresql_does_not_zero_fill_new_wal_segments(servers) -> None:  # type: ignore[no-untyped-def]
    if not servers.embedded:
        pytest.skip("MS07_TEST_DATABASE_URL names a server ms07 did not configure")
    assert embedded._SETTINGS == {"wal_init_zero": "off"}
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
