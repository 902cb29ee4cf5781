"""A migration marked ``-- ms07: no-transaction`` (0006, the search's indexes) builds its
indexes CONCURRENTLY: writes to distribution_jobs go on during the build, a build
interrupted half-way leaves an INVALID index that the next run drops and builds again,
and a second migrator waiting for the lock does not deadlock with the build."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from ms07.store import db
from tests.support import wait_for

INDEXES = ["distribution_jobs_created_idx", "distribution_jobs_destination_created_idx",
           "distribution_jobs_status_created_idx", "distribution_jobs_error_created_idx",
           "distribution_jobs_completed_idx"]


@pytest.fixture
def before_0006(database_url: str) -> Iterator[str]:
    """A database where 0006 has not run yet: the search's indexes missing, 5,000 jobs."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM schema_migrations WHERE version >= 6")
        for name in INDEXES:
            conn.execute(f"DROP INDEX {name}".encode())
        conn.execute("""INSERT INTO distribution_jobs (distribution_id, destination_name, status, payload, created_at)
                        SELECT gen_random_uuid(), 'd' || (g % 7), 'delivered', '\\x7b7d', now() - g * interval '1 s'
                          FROM generate_series(1, 5000) g""")
    yield database_url


def _validity(url: str) -> dict[str, bool]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute(
            """SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                WHERE c.relname = ANY(%s)""", (INDEXES,)).fetchall())


def _building(url: str) -> int | None:
    """The pid of the backend building an index on distribution_jobs, if one is."""
    with psycopg.connect(url) as conn:
        row = conn.execute("""SELECT pid FROM pg_stat_progress_create_index
                               WHERE relid = 'distribution_jobs'::regclass""").fetchone()
    return row[0] if row else None


async def _migrate(url: str) -> list[str]:
    conn = await db.connect(url)
    try:
        return await db.migrate(conn)
    finally:
        await conn.close()


async def test_writes_go_on_during_the_build_and_an_interrupted_build_is_redone(before_0006: str) -> None:
    url = before_0006
    # A reader with an open snapshot: the concurrent build waits for it before it marks
    # its index valid, which holds the build half-way for as long as we need.
    reader = psycopg.connect(url)
    reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    reader.execute("SELECT count(*) FROM distribution_jobs").fetchone()
    try:
        first = asyncio.create_task(_migrate(url))
        builder = await wait_for(lambda: _building(url), timeout=20, what="the concurrent build under way")
        await wait_for(lambda: _validity(url) == {"distribution_jobs_created_idx": False},
                       what="the first index in the catalog, not yet valid")
        # Writes go on meanwhile (a plain CREATE INDEX would hold them back to its end).
        with psycopg.connect(url, autocommit=True) as writer:
            writer.execute("SET lock_timeout = '3s'")
            writer.execute("""INSERT INTO distribution_jobs (distribution_id, destination_name, payload)
                              VALUES (gen_random_uuid(), 'during', '\\x7b7d')""")
            writer.execute("UPDATE distribution_jobs SET status = 'dead' WHERE destination_name = 'd3'")
        assert _building(url) == builder and not first.done()
        # Interrupt it (a deploy killing the migration Job): the index stays, INVALID.
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("SELECT pg_cancel_backend(%s)", (builder,))
        with pytest.raises(psycopg.errors.QueryCanceled):
            await first
        assert _validity(url) == {"distribution_jobs_created_idx": False}
        with psycopg.connect(url) as conn:
            assert not conn.execute("SELECT 1 FROM schema_migrations WHERE version = 6").fetchone()
    finally:
        reader.rollback()
        reader.close()
    # Run again: the invalid index is dropped and built again, the rest built, 0006 recorded.
    assert await _migrate(url) == ["0006_history_indexes", "0007_search", "0008_status_validate", "0009_paused_index"]
    assert _validity(url) == dict.fromkeys(INDEXES, True)
    with psycopg.connect(url) as conn:
        definition = conn.execute("SELECT pg_get_indexdef('distribution_jobs_created_idx'::regclass)").fetchone()[0]
        assert definition.endswith("(created_at, distribution_id)")
        assert conn.execute("SELECT count(*) FROM distribution_jobs WHERE destination_name = 'during'"
                            ).fetchone()[0] == 1
    assert await _migrate(url) == []


async def test_a_second_migrator_waits_for_the_build_without_deadlock(before_0006: str) -> None:
    url = before_0006
    reader = psycopg.connect(url)
    reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    reader.execute("SELECT 1 FROM distribution_jobs LIMIT 1").fetchone()
    try:
        first = asyncio.create_task(_migrate(url))
        await wait_for(lambda: _building(url), timeout=20, what="the concurrent build under way")
        second = asyncio.create_task(_migrate(url))  # another pod starting: waits for the lock
        await asyncio.sleep(0)
        assert not second.done()
    finally:
        reader.rollback()
        reader.close()
    results: list[Any] = await asyncio.gather(first, second)
    assert results == [["0006_history_indexes", "0007_search", "0008_status_validate", "0009_paused_index"], []]
    assert _validity(url) == dict.fromkeys(INDEXES, True)


def test_a_no_transaction_migration_holds_only_concurrent_index_builds() -> None:
    sql = db.NO_TRANSACTION + "\nCREATE INDEX CONCURRENTLY IF NOT EXISTS a_idx ON t (x);\n-- note\n"
    assert db.concurrent_statements("0099_x", sql) == [
        ("a_idx", "CREATE INDEX CONCURRENTLY IF NOT EXISTS a_idx ON t (x)")]
    for bad in ("CREATE INDEX a_idx ON t (x);", "CREATE INDEX CONCURRENTLY a_idx ON t (x);",
                "ALTER TABLE t ADD COLUMN y int;"):
        with pytest.raises(ValueError, match="may only hold CREATE INDEX CONCURRENTLY IF NOT EXISTS"):
            db.concurrent_statements("0099_x", db.NO_TRANSACTION + "\n" + bad)
    bundled = [(v, n, s) for v, n, s in db.migrations() if db.outside_transaction(s)]
    assert [v for v, _, _ in bundled] == [6, 7, 9]
    assert [i for i, _ in db.concurrent_statements("0006", bundled[0][2])] == INDEXES
