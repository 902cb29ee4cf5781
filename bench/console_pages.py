"""Do the console's pages answer fast with a big history? (issue 22: < 200 ms at 10M jobs)

Seeds N jobs (default 2,000,000; ``--jobs 10000000`` for the issue's figure) over 30 days
and 20 destinations with bench.search_scale.seed, one attempt row per job, and
``--recent`` (default 30,000) more attempts in the last hour (the overview's and the
destinations' window); VACUUM ANALYZE. Then serves ``ms07 console`` (the standalone
app, in-process, without a token: ``allow_unauthenticated``) on loopback and times each
page over HTTP, the median of ``--runs`` rounds with min-max, against the stylesheet (a
static file through the same guard: the HTTP round trip) measured in the same rounds. ``diagnose all``
(the overview's verdict, cached for a minute and run in the background) is warmed
before the rounds, so the overview's time is its own queries and rendering.

    python -m bench.console_pages [--jobs N] [--recent N] [--runs 7]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import psycopg

from bench.common import reset_state, servers
from bench.search_scale import DESTINATIONS, seed

PAGES = {
    "stylesheet (baseline)": "/console/static/console.css",
    "overview": "/console/",
    "overview.json (live update)": "/console/overview.json",
    "destinations": "/console/destinations",
    "a destination": "/console/destinations/dest-03",
    "distributions, no filter": "/console/distributions",
    "distributions, destination + 2 h": "/console/distributions?destination=dest-07&since=26h&until=24h",
    "distributions, correlation id": "/console/distributions?correlation_id=corr-4242",
    "a distribution": "/console/distributions/{one}",
    "DLQ": "/console/dlq",
    "DLQ, destination": "/console/dlq?destination=dest-11",
    "replay dry run, destination": "/console/replays/new?destination=dest-11",
}


def seed_attempts(url: str, recent: int) -> float:
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute(
            """INSERT INTO distribution_attempts (distribution_id, destination_name, attempt, status,
                      response_status_code, error_code, error_message, started_at, completed_at)
               SELECT distribution_id, destination_name, 1,
                      CASE WHEN status = 'delivered' THEN 'success' ELSE 'failed' END,
                      CASE WHEN status = 'delivered' THEN 200 ELSE 503 END, last_error_code,
                      CASE WHEN status = 'delivered' THEN NULL ELSE 'HTTP 503' END,
                      created_at, created_at + interval '40 milliseconds'
                 FROM distribution_jobs""")
        conn.execute(
            """INSERT INTO distribution_attempts (distribution_id, destination_name, attempt, status,
                      response_status_code, started_at, completed_at)
               SELECT gen_random_uuid(), 'dest-' || lpad((g %% %(d)s)::text, 2, '0'), 1,
                      CASE WHEN g %% 50 = 0 THEN 'failed' ELSE 'success' END,
                      CASE WHEN g %% 50 = 0 THEN 500 ELSE 200 END, s, s + random() * interval '200 milliseconds'
                 FROM (SELECT g, now() - random() * interval '1 hour' AS s
                         FROM generate_series(1, %(n)s) g) x""", {"d": DESTINATIONS, "n": recent})
        conn.execute("VACUUM ANALYZE distribution_attempts")
    return time.perf_counter() - t0


async def measure(srv: object, runs: int, tmp: Path) -> dict[str, list[float]]:
    import aiohttp

    from ms07.config import load_settings
    from ms07.console import standalone

    config = tmp / "console.yaml"
    config.write_text("service: {allow_unauthenticated: true}\ndestinations:\n" + "".join(
        f"  - {{name: dest-{i:02d}, url: 'http://127.0.0.1:9/'}}\n" for i in range(DESTINATIONS)))
    os.environ.pop("MS07_API_TOKEN", None)
    settings = load_settings(config, environ={}, database_url=srv.database_url,  # type: ignore[attr-defined]
                             redis_url=srv.redis_url, state_dir=str(tmp))  # type: ignore[attr-defined]
    with psycopg.connect(srv.database_url) as conn:  # type: ignore[attr-defined]
        one = conn.execute("SELECT distribution_id FROM distribution_jobs LIMIT 1").fetchone()[0]  # type: ignore[index]
    running = await standalone.start(settings, 0, "127.0.0.1")
    times: dict[str, list[float]] = {label: [] for label in PAGES}
    try:
        base = f"http://127.0.0.1:{running.port}"
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
            async with client.get(f"{base}/console/") as resp:  # the session, and diagnose all warmed
                assert resp.status == 200, await resp.text()
            for _ in range(runs):
                for label, path in PAGES.items():
                    t0 = time.perf_counter()
                    async with client.get(base + path.format(one=one)) as resp:
                        await resp.read()
                        assert resp.status == 200, (path, resp.status)
                    times[label].append(time.perf_counter() - t0)
    finally:
        await running.close()
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2_000_000)
    ap.add_argument("--recent", type=int, default=30_000)
    ap.add_argument("--runs", type=int, default=7)
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
        took = sum(seed(srv.database_url, args.jobs, 30)[:2]) + seed_attempts(srv.database_url, args.recent)
        console.print(f"seeded {args.jobs:,} jobs, {args.jobs + args.recent:,} attempts in {took:.0f}s")
        times = asyncio.run(measure(srv, args.runs, srv.state_dir))
    if srv.owned:
        shutil.rmtree(srv.state_dir, ignore_errors=True)
    baseline = statistics.median(times["stylesheet (baseline)"])
    table = Table(title=f"console pages, {args.jobs:,} jobs (median of {args.runs}, min-max; HTTP on loopback)")
    for col in ("page", "median", "min-max", "x baseline"):
        table.add_column(col)
    slow = False
    for label, ts in times.items():
        med = statistics.median(ts)
        slow |= med > 0.2
        table.add_row(label, f"{med * 1000:.1f} ms", f"{min(ts) * 1000:.1f}-{max(ts) * 1000:.1f} ms",
                      f"{med / baseline:.1f}")
    console.print(table)
    return 1 if slow else 0


if __name__ == "__main__":
    raise SystemExit(main())
