"""Does the history search stay index-backed and fast at scale? (issue 19)

Builds N jobs (default 2,000,000; the issue's target is 10,000,000) server-side with
generate_series, with a realistic spread: 50 destinations of very different sizes (a few
take most of the traffic), 30 days of created times, 95.5% delivered (some after retries,
keeping the last error code), 2% failed, 1.5% dead, two destinations down for a few hours
(every job of theirs in that window dead), open jobs only in the last hours, correlation
ids shared by the jobs of one submit, idempotency keys on 70%. The secondary indexes are
dropped for the load and built again afterwards (as fast as a load gets), with the same
definitions the migrations gave them; then VACUUM ANALYZE.

Then, for each filter, ``--queries`` searches with values drawn at random (a destination,
a status set, a 2-hour window somewhere in the 30 days, an existing correlation id, ...):
the first page (limit 50) and the cursor's next page, timed separately, with the
statement the API runs (ms07/store/search.py, planned with each call's values, as the API
does), in ``--rounds`` rounds of other draws. p50/p99 per filter (the median over the
rounds, with the lowest and highest round's p99), and the scans the plan of the last draw
uses. Exit 1 when a filter's p99 misses 50 ms or a plan scans the table.

Where: a dedicated database, ``--database-url postgresql://postgres@127.0.0.1:5432/ms07_bench_search``
(created when missing; ``--drop`` drops it at the end; ``--reuse`` keeps a table that
already holds --jobs jobs, to measure again without building it again), else an embedded
PostgreSQL in a temporary directory.

    python -m bench.search_scale [--jobs N] [--queries 200] [--rounds 3] [--database-url URL [--reuse] [--drop]]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.rows import dict_row

from bench.diagnose_scale import _SCAN

DESTINATIONS = 50
ERRORS = ["HTTP_5XX", "HTTP_4XX", "READ_TIMEOUT", "CONNECT_ERROR", "TLS_ERROR", "HTTP_429"]
TARGET_MS = 50.0

# One row per job g (r1..r4 uniform in [0, 1)); times relative to t0 (the load's start).
_ROWS = """
INSERT INTO distribution_jobs (distribution_id, destination_name, correlation_id, status, priority, payload,
       idempotency_key, attempts, max_attempts, last_error_code, last_error, created_at, updated_at, started_at,
       completed_at)
SELECT gen_random_uuid(), d, md5('submit-' || (g / 3)), st, 'default',
       convert_to('{"event":"order.updated","order":' || g || ',"total":' || (g %% 997) || '.50}', 'UTF8'),
       CASE WHEN r4 < 0.7 THEN 'idem-' || md5(g::text) END,
       att, 5, err, CASE WHEN err IS NOT NULL THEN 'the last attempt failed: ' || err END,
       c, coalesce(done, c), c, done
  FROM (SELECT g, d, c, st, r4,
               CASE st WHEN 'dead' THEN 5 WHEN 'delivered' THEN CASE WHEN r2 > 0.97 THEN 2 + (g %% 2) ELSE 1 END
                       WHEN 'queued' THEN 0 ELSE 1 + (g %% 3) END AS att,
               CASE WHEN st = 'dead' AND down THEN 'CONNECT_ERROR'
                    WHEN st IN ('dead', 'retrying') OR (st = 'delivered' AND r2 > 0.97)
                         THEN (ARRAY['HTTP_5XX', 'READ_TIMEOUT', 'CONNECT_ERROR', 'HTTP_429'])[1 + g %% 4]
                    WHEN st = 'failed' THEN (ARRAY['HTTP_4XX', 'HTTP_4XX', 'TLS_ERROR'])[1 + g %% 3] END AS err,
               CASE WHEN st IN ('queued', 'retrying', 'processing') THEN NULL
                    WHEN st = 'dead' THEN c + make_interval(mins => 31, secs => r3 * 60)
                    WHEN st = 'delivered' AND r2 > 0.97 THEN c + make_interval(secs => 5 + r3 * 600)
                    ELSE c + make_interval(secs => 0.05 + r3 * 2) END AS done
          FROM (SELECT g, d, c, r2, r3, r4, down,
                       CASE WHEN down THEN 'dead'
                            WHEN c > %(t0)s - interval '3 hours' AND r2 > 0.994
                                 THEN (ARRAY['queued', 'retrying', 'processing'])[1 + g %% 3]
                            WHEN r2 < 0.955 THEN 'delivered' WHEN r2 < 0.975 THEN 'failed'
                            WHEN r2 < 0.99 THEN 'dead' ELSE 'delivered' END AS st
                  FROM (SELECT g, d, c, r2, r3, r4,
                               (d = 'dest-07' AND c BETWEEN %(t0)s - interval '50 hours'
                                                        AND %(t0)s - interval '46 hours')
                               OR (d = 'dest-23' AND c BETWEEN %(t0)s - interval '200 hours'
                                                           AND %(t0)s - interval '197 hours') AS down
                          FROM (SELECT g, 'dest-' || lpad(floor(%(dests)s * random() ^ 3)::int::text, 2, '0') AS d,
                                       %(t0)s - make_interval(secs => random() * %(span)s) AS c,
                                       random() AS r2, random() AS r3, random() AS r4
                                  FROM generate_series(%(a)s::bigint, %(b)s::bigint) AS g) AS s0) AS s1) AS s2) AS s3
"""


def _admin_url(url: str) -> tuple[str, str]:
    """(the same server's ``postgres`` database, the database name in ``url``)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/postgres")), parts.path.lstrip("/")


def ensure_database(url: str) -> None:
    admin, name = _admin_url(url)
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"'.encode())


def drop_database(url: str) -> None:
    admin, name = _admin_url(url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


def migrate(url: str) -> None:
    from ms07.store import db as store_db

    async def go() -> None:
        conn = await store_db.connect(url)
        try:
            await store_db.migrate(conn)
        finally:
            await conn.close()

    asyncio.run(go())


def seed(url: str, jobs: int, days: int) -> tuple[float, float, dt.datetime]:
    """Load ``jobs`` rows without secondary indexes, then build them. Returns (seconds
    loading, seconds indexing, t0)."""
    with psycopg.connect(url, autocommit=True) as conn:
        t0 = conn.execute("SELECT date_trunc('second', now())").fetchone()[0]
        conn.execute("TRUNCATE distribution_jobs, distribution_attempts")
        indexes = conn.execute(
            """SELECT indexname, indexdef FROM pg_indexes
                WHERE tablename = 'distribution_jobs' AND indexname <> 'distribution_jobs_pkey'""").fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"'.encode())
        conn.execute("ALTER TABLE distribution_jobs DROP CONSTRAINT distribution_jobs_pkey")
        conn.execute("SET synchronous_commit = off")
        started = time.perf_counter()
        chunk = 1_000_000
        for a in range(0, jobs, chunk):
            b = min(jobs, a + chunk) - 1
            conn.execute(_ROWS.encode(), {"t0": t0, "span": days * 86400, "dests": DESTINATIONS, "a": a, "b": b},
                         prepare=False)
            print(f"  jobs {b + 1:,}/{jobs:,} ({time.perf_counter() - started:.0f}s)", file=sys.stderr)
        loaded = time.perf_counter() - started
        started = time.perf_counter()
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute("ALTER TABLE distribution_jobs ADD PRIMARY KEY (distribution_id)")
        for name, definition in indexes:
            conn.execute(definition.encode())
            print(f"  index {name} ({time.perf_counter() - started:.0f}s)", file=sys.stderr)
        conn.execute("VACUUM ANALYZE distribution_jobs")
        return loaded, time.perf_counter() - started, t0


# ---------------------------------------------------------------------- the searches


class Draw:
    """Filter values drawn at random among those the table holds."""

    def __init__(self, conn: psycopg.Connection[Any], jobs: int, days: int, rng: random.Random) -> None:
        self.rng = rng
        self.jobs = jobs
        self.days = days
        self.t0 = conn.execute("SELECT max(created_at) FROM distribution_jobs").fetchone()[0]
        self.keys = [r[0] for r in conn.execute(
            "SELECT idempotency_key FROM distribution_jobs TABLESAMPLE SYSTEM (0.1) WHERE idempotency_key IS NOT NULL"
            " LIMIT 2000").fetchall()]
        self.correlations = [r[0] for r in conn.execute(
            "SELECT correlation_id FROM distribution_jobs TABLESAMPLE SYSTEM (0.1) LIMIT 2000").fetchall()]

    def destination(self) -> str:
        return f"dest-{self.rng.randrange(DESTINATIONS):02d}"

    def window(self, hours: float = 2.0) -> tuple[str, str]:
        end = self.t0 - dt.timedelta(seconds=self.rng.random() * (self.days * 86400 - hours * 3600))
        return (end - dt.timedelta(hours=hours)).isoformat(), end.isoformat()

    def statuses(self) -> str:
        return self.rng.choice(["dead", "failed", "dead,failed", "retrying", "delivered"])

    def cases(self) -> dict[str, Callable[[], dict[str, str]]]:
        def win(**extra: str) -> dict[str, str]:
            since, until = self.window()
            return {"since": since, "until": until, **extra}

        outage = "dest-07"
        o_since = (self.t0 - dt.timedelta(hours=50)).isoformat()
        o_until = (self.t0 - dt.timedelta(hours=46)).isoformat()
        return {
            "no filter": dict,
            "destination": lambda: {"destination": self.destination()},
            "status (one or two)": lambda: {"status": self.statuses()},
            "status dead,failed": lambda: {"status": "dead,failed"},
            "destination + status": lambda: {"destination": self.destination(), "status": self.statuses()},
            "destination + dead,failed, 2 h": lambda: win(destination=self.destination(), status="dead,failed"),
            "outage: dest-07 dead, its 4 h": lambda: {"destination": outage, "status": "dead", "since": o_since,
                                                      "until": o_until},
            "created, 2 h window": win,
            "finished, 2 h window": lambda: win(on="finished"),
            "destination, finished 2 h": lambda: win(on="finished", destination=self.destination()),
            "correlation_id": lambda: {"correlation_id": self.rng.choice(self.correlations)},
            "idempotency_key": lambda: {"idempotency_key": self.rng.choice(self.keys)},
            "error_code": lambda: {"error_code": self.rng.choice(ERRORS)},
            "destination + error_code": lambda: {"destination": self.destination(),
                                                 "error_code": self.rng.choice(ERRORS)},
        }


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def measure(url: str, jobs: int, days: int, queries: int, seed_value: int) -> list[dict[str, Any]]:
    from ms07.ops import search
    from ms07.store.search import page_sql, sort_key, where

    out = []
    rng = random.Random(seed_value)
    with psycopg.connect(url, autocommit=True) as conn:
        draw = Draw(conn, jobs, days, rng)
        for label, make in draw.cases().items():
            first: list[float] = []
            second: list[float] = []
            rows_seen: list[int] = []
            plan = ""
            count = 0.0
            for i in range(queries):
                flt = search.parse_filter(make())
                sql, params = page_sql(flt, None, 50)
                with conn.cursor(row_factory=dict_row) as cur:
                    t = time.perf_counter()
                    cur.execute(sql.encode(), params, prepare=False)
                    rows = cur.fetchall()
                    first.append(time.perf_counter() - t)
                    rows_seen.append(len(rows))
                    if len(rows) == 50:
                        nsql, nparams = page_sql(flt, sort_key(flt, rows[-1]), 50)
                        t = time.perf_counter()
                        cur.execute(nsql.encode(), nparams, prepare=False)
                        cur.fetchall()
                        second.append(time.perf_counter() - t)
                if i == queries - 1:
                    plan = "\n".join(r[0] for r in conn.execute(("EXPLAIN " + sql).encode(), params,
                                                                prepare=False).fetchall())
                    # What a replay's dry run and plan read: every match (the last draw's).
                    clause, cparams = where(flt)
                    t = time.perf_counter()
                    conn.execute(f"SELECT count(*) FROM distribution_jobs WHERE {clause}".encode(), cparams,
                                 prepare=False).fetchone()
                    count = time.perf_counter() - t
            scans = sorted({f"SEQ {m.group(3)}" if m.group(1) == "Seq Scan" else (m.group(2) or m.group(3))
                            .removeprefix("distribution_jobs_") for m in _SCAN.finditer(plan)
                            if m.group(1) != "Bitmap Heap Scan"})
            out.append({"filter": label, "p50": _pct(first, 0.5), "p99": _pct(first, 0.99), "max": max(first),
                        "next_p50": _pct(second, 0.5) if second else None,
                        "next_p99": _pct(second, 0.99) if second else None, "next_n": len(second),
                        "rows": statistics.median(rows_seen), "scans": ", ".join(scans), "count": count,
                        "seq": "Seq Scan" in plan, "plan": plan})
    return out


def combine(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per filter: the median over the rounds of each percentile, and the spread (lowest
    and highest round) of the p99s."""
    out = []
    for per_filter in zip(*rounds, strict=True):
        row = dict(per_filter[-1])
        for key in ("p50", "p99", "next_p50", "next_p99", "count"):
            values = [r[key] for r in per_filter if r[key] is not None]
            row[key] = statistics.median(values) if values else None
            row[key + "_range"] = (min(values), max(values)) if values else None
        row["seq"] = any(r["seq"] for r in per_filter)
        out.append(row)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2_000_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--queries", type=int, default=200, help="searches per filter (each: a page and the next)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of --queries draws (other values each round)")
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--database-url", help="a dedicated database (created when missing); its jobs are REPLACED")
    ap.add_argument("--reuse", action="store_true", help="keep the jobs already there if there are --jobs of them")
    ap.add_argument("--drop", action="store_true", help="drop the --database-url database at the end")
    ap.add_argument("--plans", action="store_true", help="print each filter's plan")
    args = ap.parse_args()
    from rich.console import Console
    from rich.table import Table

    from ms07 import embedded

    console = Console(width=220)
    state = None
    url = args.database_url
    if url is None:
        state = Path(tempfile.mkdtemp(prefix="ms07-bench-"))
        url = embedded.start_postgres(state)
    else:
        ensure_database(url)
    try:
        migrate(url)
        with psycopg.connect(url) as conn:
            have = conn.execute("SELECT count(*) FROM distribution_jobs").fetchone()[0]
        if args.reuse and have == args.jobs:
            console.print(f"reusing the {have:,} jobs already there")
        else:
            loaded, indexed, _ = seed(url, args.jobs, args.days)
            console.print(f"built {args.jobs:,} jobs: loaded in {loaded:.0f}s, indexed in {indexed:.0f}s")
        with psycopg.connect(url) as conn:
            size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('distribution_jobs')),"
                                " current_setting('shared_buffers'), version()").fetchone()
        console.print(f"distribution_jobs: {size[0]} with its indexes; shared_buffers {size[1]}; "
                      f"{size[2].split(' on ')[0]}")
        rounds = [measure(url, args.jobs, args.days, args.queries, args.seed + i) for i in range(args.rounds)]
        results = combine(rounds)
    finally:
        if state is not None:
            embedded.stop_servers(state)
            shutil.rmtree(state, ignore_errors=True)
        elif args.drop:
            drop_database(url)
    table = Table(title=f"history search, {args.jobs:,} jobs: one page of 50 and the cursor's next; "
                        f"{args.queries} draws per filter a round, median of {args.rounds} rounds "
                        "(p99: lowest-highest round)")
    for col in ("filter", "page p50", "page p99", "next p50", "next p99", "rows (median)", "count (a draw)",
                "plan: scans"):
        table.add_column(col)

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:.1f} ms"

    def spread(r: dict[str, Any], key: str) -> str:
        low_high = r[key + "_range"]
        return ms(r[key]) + ("" if low_high is None else f" ({low_high[0] * 1000:.0f}-{low_high[1] * 1000:.0f})")

    for r in results:
        table.add_row(r["filter"], ms(r["p50"]), spread(r, "p99"), ms(r["next_p50"]), spread(r, "next_p99"),
                      f"{r['rows']:g}", f"{r['count'] * 1000:.0f} ms", r["scans"])
    console.print(table)
    if args.plans:
        for r in results:
            console.print(f"[bold]{r['filter']}[/]\n{r['plan']}\n", highlight=False)
    slow = [r["filter"] for r in results
            if r["p99"] * 1000 > TARGET_MS or (r["next_p99"] or 0) * 1000 > TARGET_MS or r["seq"]]
    if slow:
        console.print(f"over the {TARGET_MS:g} ms p99 target or scanning the table: {', '.join(slow)}")
    return 1 if slow else 0


if __name__ == "__main__":
    raise SystemExit(main())
