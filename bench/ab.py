"""Two source trees of the engine, alternating against the same servers: is a change faster?

    python -m bench.ab OTHER_TREE [--base .] [-n 20000] [-c 64] [--rounds 4] [--rate 1500]
                       [--prefetch-a 4] [--prefetch-b 4] [--sql-a SQL] [--sql-b SQL]

Each round runs tree A (``--base``, this checkout by default) then tree B (``OTHER_TREE``,
e.g. a ``git worktree``), both on one PostgreSQL, one Redis and one sink process:

1. drain: N distributions queued, one ``ms07 run`` delivers them; deliveries/s between 10 %
   and 90 % seen by the sink, and the CPU seconds per 1,000 deliveries of the engine and
   of PostgreSQL (every process of the embedded server);
2. paced: the same warm engine takes distributions submitted at ``--rate``/s for
   ``--seconds``; p50/p95/p99 submit -> delivered from the job rows, and the CPU per
   1,000 of the engine and of PostgreSQL (the submissions' inserts included).

The trees alternate inside each round so a burst of load from other tenants of this
shared machine hits both; medians of the rounds are printed, with B / A ratios. Both
trees share the database, so a migration one tree has and the other lacks applies to
both after the first run: compare schema changes with ``--sql-a`` / ``--sql-b`` (SQL run
before each of that side's runs, e.g. two storage settings) and the same tree twice.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.throughput import _latencies, _paced_library_submit


def _one(tree: Path, prefetch: float, sql: str | None, srv: common.Servers, sink_port: int, n: int, concurrency: int,
         rate: float, seconds: float) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="ms07-ab-"))
    config = common.write_config(tmp / "config.yaml", sink_port, concurrency, prefetch=prefetch)
    from ms07.config import load_settings

    settings = load_settings(config, environ={}, database_url=srv.database_url, redis_url=srv.redis_url)
    common.reset_state(srv)
    if sql:
        import psycopg

        with psycopg.connect(srv.database_url, autocommit=True) as conn:
            conn.execute(sql)
    common.sink_reset(sink_port)
    asyncio.run(common.fill(settings, n))
    http_port = common.free_port()
    engine = common.start_engine(config, srv, http_port, log=tmp / "engine.log", wait=False, tree=tree)
    watch = common.ProcessWatch(engine.pid)
    pg = common.ProcessWatch(postmaster) if (postmaster := common.postmaster_pid(srv)) else None

    def pg_cpu() -> float:
        return pg.cpu_seconds() if pg else 0.0

    try:
        pg0 = pg_cpu()
        delivered = common.wait_delivered(sink_port, n, watch, timeout=max(120, n / 100))
        pg1 = pg_cpu()
        common.wait_http(f"http://127.0.0.1:{http_port}/health/live", timeout=60)
        cpu = delivered.cpu_seconds / n * 1000
        common.sink_reset(sink_port)
        paced_n = int(rate * seconds)
        e0, pg2 = watch.cpu_seconds(), pg_cpu()
        _, ids = asyncio.run(_paced_library_submit(settings, paced_n, rate))
        common.wait_delivered(sink_port, paced_n, None, timeout=120)
        e1, pg3 = watch.cpu_seconds(), pg_cpu()
        time.sleep(0.5)  # the last outcomes commit after the sink saw them (a benchmark, not a test)
        lat = _latencies(srv.database_url, ids)
    finally:
        engine.send_signal(signal.SIGTERM)
        engine.wait(60)
        watch.stop()
        if pg:
            pg.stop()
    # PostgreSQL's CPU over the drain counts the filler's nothing (it finished before) but
    # the paced part's counts the producer's inserts too: both trees pay the same for those.
    return {"rate": delivered.rate, "cpu": cpu, "pg_cpu": (pg1 - pg0) / n * 1000,
            "paced_cpu": (e1 - e0) / paced_n * 1000, "paced_pg_cpu": (pg3 - pg2) / paced_n * 1000,
            "p50": common.percentile(lat, 0.5) * 1000,
            "p95": common.percentile(lat, 0.95) * 1000, "p99": common.percentile(lat, 0.99) * 1000}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("other", type=Path, help="tree B: another checkout of this repository")
    p.add_argument("--base", type=Path, default=common.ROOT, help="tree A (default: this checkout)")
    p.add_argument("-n", type=int, default=20_000)
    p.add_argument("-c", "--concurrency", type=int, default=64)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--rate", type=float, default=1500.0, help="paced submissions/s for the latency part")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--prefetch-a", type=float, default=4.0)
    p.add_argument("--prefetch-b", type=float, default=4.0)
    p.add_argument("--sql-a", help="SQL to run before each of A's runs")
    p.add_argument("--sql-b", help="SQL to run before each of B's runs")
    a = p.parse_args()
    trees = {"A": (a.base.resolve(), a.prefetch_a, a.sql_a), "B": (a.other.resolve(), a.prefetch_b, a.sql_b)}
    for name, (tree, _, _) in trees.items():
        if not (tree / "ms07" / "engine" / "engine.py").is_file():
            raise SystemExit(f"error: tree {name} ({tree}) has no ms07/engine/engine.py")
        if (origin := common.ms07_origin(tree)) != tree / "ms07":
            raise SystemExit(f"error: tree {name}'s engine would import ms07 from {origin}, not from {tree}")
    results: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    load_before = os.getloadavg()[0]
    with common.sink_process() as (sink_port, _), common.servers() as srv:
        for r in range(a.rounds):
            order = ["A", "B"] if r % 2 == 0 else ["B", "A"]
            for name in order:
                tree, prefetch, sql = trees[name]
                res = _one(tree, prefetch, sql, srv, sink_port, a.n, a.concurrency, a.rate, a.seconds)
                results[name].append(res)
                print(f"round {r + 1} {name}: " + ", ".join(f"{k} {v:,.2f}" for k, v in res.items()), flush=True)
    med: dict[str, dict[str, Any]] = {
        name: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for name, rs in results.items()}
    print(f"\nN = {a.n:,}, C = {a.concurrency}, {a.rounds} rounds, paced at {a.rate:,.0f}/s; "
          f"load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after")
    print("| | deliveries/s | engine CPU s / 1k | PostgreSQL CPU s / 1k | paced: engine CPU s / 1k "
          "| paced: PostgreSQL CPU s / 1k | p50 ms | p95 ms | p99 ms |\n|---|" + "---:|" * 8)
    for name, (tree, prefetch, sql) in trees.items():
        m = med[name]
        print(f"| {name}: {tree.name} (prefetch {prefetch:g}{', SQL' if sql else ''}) | "
              f"{m['rate']:,.0f} | {m['cpu']:.3f} | {m['pg_cpu']:.3f} | "
              f"{m['paced_cpu']:.3f} | {m['paced_pg_cpu']:.3f} | {m['p50']:.1f} | {m['p95']:.1f} | {m['p99']:.1f} |")
    ratio = {k: med["B"][k] / med["A"][k] if med["A"][k] else float("nan") for k in med["A"]}
    print("| B / A | " + " | ".join(f"{ratio[k]:.2f}" for k in (
        "rate", "cpu", "pg_cpu", "paced_cpu", "paced_pg_cpu", "p50", "p95", "p99")) + " |")


if __name__ == "__main__":
    main()
