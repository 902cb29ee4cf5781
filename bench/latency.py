"""Where enqueue -> delivered time goes, stage by stage, at a paced rate.

    python -m bench.latency [--rate 1500] [--seconds 10] [-c 64] [--runs 1]

One PostgreSQL, one Redis (loopback TCP, as in bench/compare.py) and one sink; a warm
``ms07 run``; the ms07 producer paced at ``--rate``. Then, per job, from what PostgreSQL
recorded and the payload's own enqueue stamp:

- submit:  enqueue call -> job row inserted (``created_at``: the producer's transaction start)
- queue:   row inserted -> claimed (``started_at``): commit, XADD, XREADGROUP, claim
- start:   claimed -> HTTP attempt started (``distribution_attempts.started_at``)
- http:    attempt started -> response (``completed_at``)

and the sink's own enqueue -> arrival percentiles, the figure bench/compare.py reports.
Clocks: the producer's ``time.time()``, PostgreSQL's ``now()`` and the engine's
``datetime.now()`` are one host clock.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench import common, compare, systems
from bench.peers import payload

STAGES = ("submit", "queue", "start", "http", "total")


def stages(database_url: str) -> dict[str, list[float]]:
    import psycopg

    out: dict[str, list[float]] = {s: [] for s in STAGES}
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            """SELECT j.payload, extract(epoch FROM j.created_at), extract(epoch FROM j.started_at),
                      extract(epoch FROM a.started_at), extract(epoch FROM a.completed_at)
                 FROM distribution_jobs j
                 JOIN distribution_attempts a USING (distribution_id)
                WHERE j.status = 'delivered'"""
        ).fetchall()
    for body, created, claimed, started, completed in rows:
        t = payload.stamp(bytes(body))
        if t is None:
            continue
        created, claimed, started, completed = map(float, (created, claimed, started, completed))
        for name, value in zip(
            STAGES,
            (created - t, claimed - created, started - claimed, completed - started, completed - t),
            strict=True,
        ):
            out[name].append(value * 1000)
    return out


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": common.percentile(values, 0.50),
        "p95": common.percentile(values, 0.95),
        "p99": common.percentile(values, 0.99),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


def run(a: argparse.Namespace) -> list[dict[str, Any]]:
    tmp = Path(tempfile.mkdtemp(prefix="ms07-latency-"))
    results = []
    with common.sink_process() as (sink_port, _), common.servers(redis_tcp=True) as srv:
        system = systems.System("ms07", srv, sink_port, a.concurrency, tmp)
        for _ in range(a.runs):
            lat = compare.latency_run(
                system, a.rate, a.seconds, sink_port, tmp, after_warm=lambda: common.reset_state_rows(srv)
            )
            per = {k: summary(v) for k, v in stages(srv.database_url).items() if v}
            results.append({"rate": lat["achieved_rate"], "sink": lat, "stages": per})
            print(table(results[-1], a.rate), flush=True)
    return results


def table(r: dict[str, Any], offered: float) -> str:
    lines = [
        f"offered {offered:,.0f}/s, achieved {r['rate']:,.0f}/s; sink enqueue -> arrival: "
        + " / ".join(f"{k} {r['sink'][f'{k}_ms']:.1f}" for k in ("p50", "p95", "p99") if r["sink"].get(f"{k}_ms")),
        "| stage | p50 ms | p95 ms | p99 ms | max ms | mean ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in r["stages"].items():
        lines.append(
            f"| {name} | {s['p50']:.1f} | {s['p95']:.1f} | {s['p99']:.1f} | {s['max']:.1f} | {s['mean']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=1500.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("-c", "--concurrency", type=int, default=64)
    p.add_argument("--runs", type=int, default=1)
    run(p.parse_args())


if __name__ == "__main__":
    main()
