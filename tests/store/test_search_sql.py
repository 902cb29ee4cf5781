"""Every search filter reaches its rows through an index (migration 0002).

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
    "replay": ({"destination": "a", "status": "dead,failed", "since": "2026-12-03T14:00:00Z",
                "until": "2026-12-03T16:00:00Z"}, "distribution_jobs_destination_created_idx"),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("paged", [False, True], ids=["first-page", "next-page"])
def test_each_filter_is_index_backed(database_url: str, name: str, paged: bool) -> None:
    raw, index = CASES[name]
    sql, params = page_sql(search.parse_filter(raw), AFTER if paged else None, 50)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in conn.execute(("EXPLAIN " + sql).encode(), params).fetchall())
    assert "Seq Scan" not in plan, plan
    assert any(i in plan for i in index.split("|")), plan
