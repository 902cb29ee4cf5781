"""Paging through the history while jobs keep arriving: no job twice, none skipped."""

from __future__ import annotations

from typing import Any

import aiohttp
import psycopg
import pytest

from tests.cli.test_jobs import insert


@pytest.fixture
async def engine(make_settings, sink, start_engine) -> Any:
    return await start_engine(make_settings(destinations=[{"name": "a", "url": sink.url("/in")}]))


def _insert_between(database_url: str, n: int) -> None:
    """``n`` new jobs: half created now (ahead of every page), half back-dated into the
    range being paged (between pages already read and pages still to come)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO distribution_jobs (distribution_id, destination_name, status, payload, created_at)
               SELECT gen_random_uuid(), 'a', 'queued', '{}',
                      CASE WHEN i %% 2 = 0 THEN now()
                           ELSE '2026-12-03 14:00:00+00'::timestamptz + random() * interval '50 minutes' END
                 FROM generate_series(1, %s) AS i""",
            (n,),
        )


async def test_no_job_seen_twice_none_skipped_while_10000_are_inserted(engine: Any, database_url: str) -> None:
    # 5,000 jobs at the start, in runs of 10 sharing one created_at (ties the id must break).
    existing: set[str] = set()
    for minute in range(50):
        for second in range(10):
            existing.update(insert(database_url, 10, status="queued", step="0 seconds",
                                   created=f"2026-12-03 14:{minute:02d}:{second:02d}+00"))
    assert len(existing) == 5000
    url = f"http://127.0.0.1:{engine.http_port}/api/v1/distributions"
    seen: list[str] = []
    inserted = 0
    cursor: str | None = None
    async with aiohttp.ClientSession() as http:
        while True:
            params = {"destination": "a", "limit": "100", **({"cursor": cursor} if cursor else {})}
            async with http.get(url, params=params) as r:
                assert r.status == 200, await r.text()
                page = await r.json()
            seen += [d["distribution_id"] for d in page["distributions"]]
            created = [d["created_at"] for d in page["distributions"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
            if inserted < 10_000:  # between every two pages, 200 more jobs
                _insert_between(database_url, 200)
                inserted += 200
    assert inserted == 10_000
    assert len(seen) == len(set(seen)), "a job was shown twice"
    assert existing <= set(seen), f"{len(existing - set(seen))} jobs that existed at the start were skipped"
    assert created == sorted(created, reverse=True)
