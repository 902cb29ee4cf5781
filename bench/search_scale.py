"""Does the history search stay index-backed and fast at scale? (issue 19)

Seeds N jobs (default 2,000,000) over 30 days, 20 destinations, 97% delivered, 2% failed,
1% dead, with last error codes on the failed ones, into an embedded PostgreSQL (a
temporary state dir) or MS07_DATABASE_URL (its tables EMPTIED first: pass --yes), runs
VACUUM ANALYZE, then times each filter's first page, a page 50 pages deep (by cursor),
and the replay's count, with the planner's real statistics (no enable_seqscan games),
and prints the scans each plan uses.

    python -m bench.search_scale [--jobs N] [--runs 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import time

import psycopg

from bench.common import reset_state, servers
from bench.diagnose_scale import _SCAN

DESTINATIONS = 20
CASES: dict[str, dict[str, str]] = {
    "no filter": {},
    "destination": {"destination": "dest-3"},
    "status dead,failed": {"status": "dead,failed"},
    "destination + dead, 2 h window": {"destination": "dest-19", "status": "dead", "since": "T-26h", "until": "T-24h"},
    "created, 2 h window": {"since": "T-26h", "until": "T-24h"},
    "finished, 2 h window": {"since": "T-26h", "until": "T-24h", "on": "finished"},
    "correlation_id": {"correlation_id": "corr-4242"},
    "idempotency_key": {"idempotency_key": "key-4242"},
    "error_code": {"error_code": "HTTP_5XX"},
}


def seed(url: str, jobs: int, days: int) -> float:
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        for start in range(0, jobs, 250_000):
            n = min(250_000, jobs - start)
            conn.execute(
                """INSERT INTO distribution_jobs (distribution_id, destination_name, status, payload, attempts,
                          correlation_id, idempotency_key, last_error_code, created_at, updated_at, completed_at)
                   SELECT gen_random_uuid(), 'dest-' || (g %% %(d)s),
                          CASE WHEN g %% 100 < 97 THEN 'delivered' WHEN g %% 100 < 99 THEN 'failed' ELSE 'dead' END,
                          '\\x7b7d', 1, 'corr-' || (g / 2), 'key-' || g,
                          CASE WHEN g %% 100 >= 97 THEN (ARRAY['HTTP_5XX', 'HTTP_4XX', 'READ_TIMEOUT'])[1 + g %% 3] END,
                          c, c + interval '2 seconds', c + interval '2 seconds'
                     FROM (SELECT g, now() - random() * make_interval(days => %(days)s) AS c
                             FROM generate_series(%(a)s::bigint, %(b)s::bigint) g) s""",
                {"d": DESTINATIONS, "days": days, "a": start, "b": start + n - 1})
            print(f"  jobs {start + n:,}/{jobs:,}", file=sys.stderr)
        conn.execute("VACUUM ANALYZE distribution_jobs")
    return time.perf_counter() - t0


def _raw(case: dict[str, str], now: dt.datetime) -> dict[str, str]:
    out = {}
    for k, v in case.items():
        if v.startswith("T-"):
            v = (now - dt.timedelta(hours=int(v[2:-1]))).isoformat()
        out[k] = v
    return out


def measure(url: str, runs: int) -> list[tuple[str, float, float, float, str]]:
    from ms07.ops import search
    from ms07.store.search import page_sql, where

    now = dt.datetime.now(dt.UTC)
    out = []
    with psycopg.connect(url, autocommit=True) as conn:
        for label, case in CASES.items():
            flt = search.parse_filter(_raw(case, now))
            sql, params = page_sql(flt, None, 50)
            first, deep, count = [], [], []
            for _ in range(runs):
                t0 = time.perf_counter()
                rows = conn.execute(sql.encode(), params).fetchall()
                first.append(time.perf_counter() - t0)
                # 50 pages in: the cursor of the 2,500th newest match.
                sql50, p50 = page_sql(flt, None, 2500)
                edge = conn.execute(sql50.encode(), p50).fetchall()
                # created_at or completed_at (JOB_COLUMNS' 12th and 15th), distribution_id
                after = (edge[-1][14 if flt.on == "finished" else 11], edge[-1][0]) if edge else None
                dsql, dparams = page_sql(flt, after, 50)
                t0 = time.perf_counter()
                conn.execute(dsql.encode(), dparams).fetchall()
                deep.append(time.perf_counter() - t0)
                clause, cparams = where(flt)
                t0 = time.perf_counter()
                conn.execute(f"SELECT count(*) FROM distribution_jobs WHERE {clause}".encode(), cparams).fetchone()
                count.append(time.perf_counter() - t0)
            plan = "\n".join(r[0] for r in conn.execute(("EXPLAIN " + sql).encode(), params).fetchall())
            scans = sorted({m.group(2) or f"seq {m.group(3)}" for m in _SCAN.finditer(plan)
                            if m.group(1) != "Bitmap Heap Scan"})
            seq = "Seq Scan" in plan
            out.append((label, statistics.median(first), statistics.median(deep), statistics.median(count),
                        ", ".join(scans) + (" (SEQ SCAN)" if seq else "") + f"; {len(rows)} rows"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2_000_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--yes", action="store_true", help="allow emptying MS07_DATABASE_URL / MS07_REDIS_URL")
    args = ap.parse_args()
    if (os.environ.get("MS07_DATABASE_URL") or os.environ.get("MS07_REDIS_URL")) and not args.yes:
        print("MS07_DATABASE_URL/MS07_REDIS_URL are set: their tables will be emptied; add --yes", file=sys.stderr)
        return 2
    from rich.console import Console
    from rich.table import Table

    console = Console()
    with servers() as srv:
        reset_state(srv)
        took = seed(srv.database_url, args.jobs, args.days)
        console.print(f"seeded {args.jobs:,} jobs in {took:.0f}s")
        results = measure(srv.database_url, args.runs)
    if srv.owned:
        shutil.rmtree(srv.state_dir, ignore_errors=True)
    table = Table(title=f"history search, {args.jobs:,} jobs (median of {args.runs})")
    for col in ("filter", "first page", "page 51", "count (replay plan)", "plan: scans"):
        table.add_column(col)
    for label, first, deep, count, scans in results:
        table.add_row(label, f"{first * 1000:.1f} ms", f"{deep * 1000:.1f} ms", f"{count * 1000:.0f} ms", scans)
    console.print(table)
    return 1 if any("SEQ SCAN" in r[4] for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
