"""diagnose queue reports where the history goes: sizes, oldest rows, retention off,
stale or behind."""

from __future__ import annotations

import dataclasses

import psycopg

from ms07.diagnose import run_check_async
from tests.retention.seed import seed


async def _seeded(database_url: str) -> None:
    conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    try:
        await seed(conn, per_cell=1)
    finally:
        await conn.close()


async def test_sizes_oldest_rows_and_behind(make_settings, database_url: str) -> None:
    await _seeded(database_url)
    result = await run_check_async(make_settings(), "queue")
    storage = result.finding("storage")
    assert storage.severity == "info" and "delivered 7.0 d, failed/dead 30.0 d" in storage.summary
    section = next(s for s in result.sections if s.title == "tables (retention)")
    by_table = {row[0]: row for row in section.rows}
    assert {"distribution_jobs", "distribution_attempts"} <= set(by_table)
    assert "ago" in by_table["distribution_jobs"][4] and "ago" in by_table["distribution_attempts"][4]
    behind = result.finding("retention_behind")
    assert behind is not None and behind.severity == "warning"
    assert "a delivered job finished" in behind.evidence and "failed/dead" in behind.evidence
    assert result.finding("retention_off") is None


async def test_after_a_run_nothing_is_behind(make_settings, database_url: str) -> None:
    from ms07.ops import retention

    await _seeded(database_url)
    settings = make_settings()
    conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    try:
        await retention.prune(conn, settings.retention)
        # A run long ago: the last success is stale.
        await conn.execute("UPDATE retention_runs SET finished_at = now() - interval '1 day'")
    finally:
        await conn.close()
    result = await run_check_async(settings, "queue")
    assert result.finding("retention_behind") is None
    stale = result.finding("retention_stale")
    assert stale is not None and "last succeeded 1" in stale.summary


async def test_retention_off_is_reported(make_settings, database_url: str) -> None:
    settings = make_settings(retention={"delivered_days": 0, "dead_days": None})
    assert settings.retention.off and dataclasses.asdict(settings.retention)["dead_days"] is None
    result = await run_check_async(settings, "queue")
    off = result.finding("retention_off")
    assert off is not None and off.severity == "warning" and off.command == "ms07 db prune --dry-run"
