"""Every search filter reaches its rows through an index (migration 0006, built concurrently).

The planner is made to plan as for a big table by ``SET enable_seqscan = off`` (as the
diagnose EXPLAIN test does): a sequential scan is then chosen only when no index can
serve the filter, which is what must never happen at 10 million jobs. Each filter must
also name the index meant for it, so a dropped or mis-ordered index fails here."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from ms07.ops import search
from ms07.store.search import page_sql

T0 = dt.datetime(2026, 12, 3, 14, 0, tzinfo=dt.UTC)
AFTER = (T0, "6d6d823d-0000-4000-8000-000000000001")

CASES = {
    "none": ({}, "distribution_jobs_created_idx"),
    "destination": ({"destination": "a"}, "distribution_jobs_destination_created_idx"),
    "status": ({"status": "dead"}, "distribution_jobs_status_created_idx"),
    # The parked statuses have their own partial index, which serves as well.
    "statuses": ({"status": "dead,failed"}, "distribution_jobs_status_created_idx|distribution_jobs_parked_idx"),
    "open_statuses": ({"status": "queued,retrying"}, "distribution_jobs_status_created_idx"),
    "since_until": ({"since": "2026-12-03T14:00:00Z", "until": "2026-12-03T16:00:00Z"},
                    "distribution_jobs_created_idx"),
    "finished": ({"since": "2026-12-03T14:00:00Z", "on": "finished"}, "distribution_jobs_completed_idx"),
    "correlation_id": ({"correlation_id": "c-1"}, "distribution_jobs_correlation_idx"),
    "idempotency_key": ({"idempotency_key": "k-1"}, "distribution_jobs_idempotency_idx"),
    "error_code": ({"error_code": "TIMEOUT"}, "distribution_jobs_error_created_idx"),
    # Combined filters (migration 0007): each page read off in order, not two bitmaps sorted.
    "destination_status": ({"destination": "a", "status": "dead"}, "distribution_jobs_destination_status_created_idx"),
    "destination_finished": ({"destination": "a", "since": "2026-12-03T14:00:00Z", "on": "finished"},
                             "distribution_jobs_destination_completed_idx"),
    "destination_error_code": ({"destination": "a", "error_code": "TIMEOUT"},
                               "distribution_jobs_destination_error_created_idx"),
    # Several statuses: one ordered branch per status, merged.
    "replay": ({"destination": "a", "status": "dead,failed", "since": "2026-12-03T14:00:00Z",
                "until": "2026-12-03T16:00:00Z"}, "distribution_jobs_destination_status_created_idx"),
}
ORDERED = {"destination_status", "destination_finished", "destination_error_code", "replay", "statuses"}


def _some_jobs(conn: psycopg.Connection) -> None:
    """20,000 jobs over 20 destinations and 5 days, analysed: the planner then weighs the
    indexes as on a real table, not by the tie-breaks of an empty one."""
    conn.execute("""
        INSERT INTO distribution_jobs (distribution_id, destination_name, status, payload, created_at,
                                       completed_at, last_error_code, correlation_id, idempotency_key)
        SELECT gen_random_uuid(), (ARRAY['a','b','c','d','e','f','g','h','i','j'])[1 + g % 10] || (g % 2),
               (ARRAY['delivered','delivered','delivered','delivered','dead','failed','queued'])[1 + g % 7], '\\x7b7d',
               c, CASE WHEN g % 7 <> 6 THEN c + interval '1 second' END,
               CASE WHEN g % 7 IN (4, 5) THEN (ARRAY['TIMEOUT','HTTP_5XX','HTTP_4XX'])[1 + g % 3] END,
               'c-' || g, 'k-' || g
          FROM (SELECT g, timestamptz '2026-12-03 16:00:00+00' - g * interval '21 seconds' AS c
                  FROM generate_series(1, 20000) g) s""")
    conn.execute("ANALYZE distribution_jobs")


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("paged", [False, True], ids=["first-page", "next-page"])
def test_each_filter_is_index_backed(database_url: str, name: str, paged: bool) -> None:
    raw, index = CASES[name]
    sql, params = page_sql(search.parse_filter(raw), AFTER if paged else None, 50)
    with psycopg.connect(database_url, autocommit=True) as conn:
        _some_jobs(conn)
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in conn.execute(("EXPLAIN " + sql).encode(), params).fetchall())
    assert "Seq Scan" not in plan, plan
    assert any(i in plan for i in index.split("|")), plan
    if name in ORDERED:  # read in order: no sort of every match under the page's limit
        assert "Bitmap" not in plan and not plan.split("\n")[1].strip().startswith("->  Sort"), plan
