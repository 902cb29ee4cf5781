"""Read-only commands never create servers or databases (issue 21: a shell pointed at the
wrong MS07_STATE_DIR got a fresh empty database and reported '0 parked jobs', exit 0)."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from ms07 import embedded
from tests.support import cli


def _env(state_dir: Path) -> dict[str, str | None]:
    # No MS07_DATABASE_URL / MS07_REDIS_URL: the embedded servers of state_dir.
    return {"MS07_STATE_DIR": str(state_dir), "NO_COLOR": "1", "COLUMNS": "200",
            "MS07_DATABASE_URL": None, "MS07_REDIS_URL": None, "MS07_CONFIG": None}


def test_wrong_state_dir_is_refused_and_nothing_is_created(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    env = _env(elsewhere)
    res = cli(["dlq", "list"], env)
    assert res.exit_code == 3, res.output
    assert f"no embedded PostgreSQL runs in {elsewhere / 'postgres'}" in res.stderr
    assert "parked" not in res.stdout

    res = cli(["queue", "stats"], env)
    assert res.exit_code == 3 and f"no embedded Redis runs in {elsewhere / 'redis'}" in res.stderr

    res = cli(["diagnose", "queue", "--json"], env)
    assert res.exit_code == 3  # UNKNOWN, never an all-clear

    res = cli(["db", "status"], env)
    assert res.exit_code == 3 and "no embedded PostgreSQL runs in" in res.stderr
    assert not (elsewhere / "postgres").exists() and not (elsewhere / "redis").exists()


def test_database_without_schema_is_refused_not_migrated(servers, tmp_path: Path) -> None:
    if not servers.embedded:
        pytest.skip("needs the embedded servers (MS07_TEST_DATABASE_URL is set)")
    # The session's embedded servers run in servers.state_dir; their "ms07" database exists
    # (created at start) and has no schema: a read-only command must say so and leave it so.
    url = embedded.attach_postgres(servers.state_dir)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS schema_migrations")
    env = _env(servers.state_dir)
    res = cli(["dlq", "list"], env)
    assert res.exit_code == 3, res.output
    assert "has no ms07 schema" in res.stderr and "ms07 db migrate" in res.stderr
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,)
    res = cli(["db", "status"], env)  # reads the version without creating anything
    assert res.exit_code == 1 and "schema version none" in res.stdout


def test_read_commands_say_which_servers_they_read(env_for: dict[str, str]) -> None:
    res = cli(["dlq", "list"], env_for)
    assert res.exit_code == 0, res.output
    [line] = [x for x in res.stderr.splitlines() if x.startswith("reading ")]
    assert "reading PostgreSQL postgresql://" in line and "; Redis " in line
    assert "0 parked jobs" in res.stdout
    res = cli(["dlq", "list", "--json"], env_for)  # machine output stays machine output
    assert res.exit_code == 0 and "reading" not in res.output


def test_embedded_start_creates_what_the_other_commands_then_read() -> None:
    import shutil
    import tempfile

    # Not under pytest's basetemp (see tests/conftest.py: the embedded PostgreSQL runs as
    # its own user when we are root).
    state = Path(tempfile.mkdtemp(prefix="ms07-diag-"))
    env = _env(state)
    try:
        res = cli(["dlq", "list"], env)
        assert res.exit_code == 3 and "no embedded PostgreSQL runs in" in res.stderr
        res = cli(["embedded", "start"], env)
        assert res.exit_code == 0, res.output
        assert "schema:     applied 0001_initial" in res.stdout
        res = cli(["dlq", "list"], env)
        assert res.exit_code == 0, res.output
        assert "0 parked jobs" in res.stdout
        assert f"reading PostgreSQL embedded at {state / 'postgres'}" in res.stderr
    finally:
        embedded.stop_servers(state)
        shutil.rmtree(state, ignore_errors=True)
