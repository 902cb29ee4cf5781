"""Retention: the database stays flat under a steady load, and costs delivery little.

    python -m bench.retention [--minutes 6] [--rate 300] [--age-minutes 1]
                              [--ab-rounds 3] [--ab-n 20000] [--ab-old 200000]

Soak: a producer submits ``--rate`` jobs a second for ``--minutes`` while one engine
delivers them, with retention scaled down (finished jobs kept ``--age-minutes``, the
engine running it every 10 s). The database size (``pg_database_size``) is sampled every
3 s; growth over the last half of the run (median of the last 5 samples against the
sample at half time) should stay under 10 %. Writes docs/benchmarks/retention.png/.md/.json.

A/B: the same backlog of ``--ab-n`` jobs delivered by one engine, with ``--ab-old``
finished rows two days old in the tables, retention on (removing those rows while it
delivers) or off, alternating the order each round; the delivery rate and the sink's
p99 enqueue-to-delivered latency per round, median and spread of each, and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import common


def _config(tmp: Path, sink_port: int, retention: str, name: str) -> Path:
    return common.write_config(tmp / f"{name}.yaml", sink_port, 64, extra=retention)


def _retention(age_days: float | None, interval: float) -> str:
    if age_days is None:
        return "retention: {delivered_days: 0, dead_days: 0}\n"
    return (f"retention: {{delivered_days: {age_days:.8f}, dead_days: {age_days:.8f}, interval_seconds: {interval:g}, "
            "batch_size: 2000, batch_pause_seconds: 0.05}\n")


def _sql(srv: common.Servers, query: str, params: tuple[Any, ...] = ()) -> Any:
    import psycopg

    with psycopg.connect(srv.database_url, autocommit=True) as conn:
        return conn.execute(query, params).fetchone()


async def _produce(settings: Any, rate: int, seconds: float, stop: threading.Event, count: list[int]) -> None:
    """``rate`` jobs a second, each stamped with its enqueue time (the sink's latency)."""
    from bench.peers.payload import body
    from ms07.ops.submit import build_jobs, record_and_enqueue
    from ms07.runtime import Runtime

    async with Runtime(settings, migrate=False) as rt:
        q = await rt.queue()
        async with rt.connection() as conn:
            t0 = time.monotonic()
            while not stop.is_set() and time.monotonic() - t0 < seconds:
                tick = time.monotonic()
                batch = []
                for _ in range(rate):
                    batch += build_jobs(settings, ["sink"], body())[0]
                await record_and_enqueue(conn, q, batch)
                count[0] += rate
                await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))


def soak(srv: common.Servers, sink_port: int, minutes: float, rate: int, age_minutes: float) -> dict[str, Any]:
    from ms07.config import load_settings

    tmp = Path(tempfile.mkdtemp(prefix="ms07-retention-"))
    config = _config(tmp, sink_port, _retention(age_minutes / 1440, 10.0), "soak")
    settings = load_settings(config, environ={}, database_url=srv.database_url, redis_url=srv.redis_url)
    common.reset_state(srv)
    common.sink_reset(sink_port)
    engine = common.start_engine(config, srv, common.free_port(), log=tmp / "engine.log")
    seconds = minutes * 60
    stop = threading.Event()
    submitted = [0]

    producer = threading.Thread(target=lambda: asyncio.run(_produce(settings, rate, seconds, stop, submitted)),
                                name="producer")
    samples: list[dict[str, float]] = []
    t0 = time.monotonic()
    producer.start()
    try:
        while producer.is_alive():
            size, jobs = _sql(srv, "SELECT pg_database_size(current_database()),"
                                   " (SELECT count(*) FROM distribution_jobs)")
            samples.append({"t": time.monotonic() - t0, "db_mb": size / 2**20, "jobs": jobs,
                            "delivered": common.sink_stats(sink_port)["unique"]})
            time.sleep(3.0)
    finally:
        stop.set()
        producer.join()
        engine.send_signal(signal.SIGTERM)
        engine.wait(60)
    p99 = common.sink_latency(sink_port, skip=10).get("p99")
    runs = _sql(srv, "SELECT count(*), count(*) FILTER (WHERE outcome = 'done'),"
                     " coalesce(sum((removed->'distribution_jobs'->>'rows')::bigint), 0) FROM retention_runs")
    half = next(s for s in samples if s["t"] >= samples[-1]["t"] / 2)
    end = statistics.median(s["db_mb"] for s in samples[-5:])
    return {"minutes": minutes, "rate": rate, "age_minutes": age_minutes, "submitted": submitted[0],
            "delivered": common.sink_stats(sink_port)["unique"], "samples": samples,
            "db_mb_half": half["db_mb"], "db_mb_end": end,
            "growth_last_half_pct": (end - half["db_mb"]) / half["db_mb"] * 100,
            "p99_s": p99, "retention_runs": runs[0], "retention_runs_done": runs[1], "rows_removed": int(runs[2])}


def _seed_old(srv: common.Servers, n: int) -> None:
    import psycopg

    with psycopg.connect(srv.database_url, autocommit=True) as conn:
        conn.execute("""INSERT INTO distribution_jobs (distribution_id, destination_name, status, payload, attempts,
                                                       created_at, updated_at, completed_at)
                        SELECT gen_random_uuid(), 'sink', 'delivered', convert_to(repeat('x', 1000), 'UTF8'), 1,
                               now() - interval '2 days', now() - interval '2 days', now() - interval '2 days'
                          FROM generate_series(1, %s)""", (n,))
        conn.execute("""INSERT INTO distribution_attempts (distribution_id, destination_name, attempt, status,
                                                           response_status_code, started_at, completed_at)
                        SELECT distribution_id, 'sink', 1, 'success', 200, completed_at, completed_at
                          FROM distribution_jobs""")
        conn.execute("VACUUM ANALYZE distribution_jobs")
        conn.execute("VACUUM ANALYZE distribution_attempts")


def ab(srv: common.Servers, sink_port: int, rounds: int, n: int, old: int, rate: int,
       seconds: float) -> dict[str, Any]:
    """Per round and mode: a backlog of ``n`` drained (deliveries/s), then ``rate`` jobs a
    second for ``seconds`` (p99 enqueue to delivered), with ``old`` finished rows two days
    old in the tables that retention (on) removes meanwhile."""
    from ms07.config import load_settings

    tmp = Path(tempfile.mkdtemp(prefix="ms07-retention-ab-"))
    out: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    for i in range(rounds):
        for mode in (("on", "off") if i % 2 == 0 else ("off", "on")):
            config = _config(tmp, sink_port, _retention(1.0 if mode == "on" else None, 1.0), f"ab-{mode}")
            settings = load_settings(config, environ={}, database_url=srv.database_url, redis_url=srv.redis_url)
            common.reset_state(srv)
            _seed_old(srv, old)
            asyncio.run(common.fill(settings, n, chunk=2000))
            common.sink_reset(sink_port)
            engine = common.start_engine(config, srv, common.free_port(), log=tmp / f"ab-{mode}-{i}.log", wait=False)
            try:
                done = common.wait_delivered(sink_port, n, None, timeout=max(300.0, n / 50))
                left = _sql(srv, "SELECT count(*) FROM distribution_jobs"
                                 " WHERE completed_at < now() - interval '1 day'")[0]
                common.sink_reset(sink_port)
                count = [0]
                asyncio.run(_produce(settings, rate, seconds, threading.Event(), count))
                common.wait_delivered(sink_port, count[0], None, timeout=120)
                p99 = common.sink_latency(sink_port, skip=2).get("p99")
            finally:
                engine.send_signal(signal.SIGTERM)
                engine.wait(60)
            out[mode].append({"rate": done.rate, "p99_s": p99 if p99 is not None else float("nan"),
                              "old_rows_removed_during_drain": old - left})
    summary: dict[str, Any] = {"rounds": rounds, "n": n, "old_rows": old, "paced_rate": rate,
                               "paced_seconds": seconds, "runs": out}
    for mode in ("on", "off"):
        rates = [r["rate"] for r in out[mode]]
        p99s = [r["p99_s"] for r in out[mode]]
        summary[mode] = {"rate_median": statistics.median(rates), "rate_min": min(rates), "rate_max": max(rates),
                         "p99_median_s": statistics.median(p99s), "p99_min_s": min(p99s), "p99_max_s": max(p99s)}
    summary["rate_ratio"] = summary["on"]["rate_median"] / summary["off"]["rate_median"]
    summary["p99_ratio"] = summary["on"]["p99_median_s"] / summary["off"]["p99_median_s"]
    return summary


def markdown(s: dict[str, Any], a: dict[str, Any] | None, m: dict[str, Any]) -> str:
    lines = [
        "# Retention: the database stays flat, and delivery does not pay for it",
        "",
        f"{m['cpus']} CPUs, Python {m['python']}, {m['date']}, load average {m['load_before'][0]:.1f} before / "
        f"{m['load_after'][0]:.1f} after (shared machine).",
        "",
        f"**Soak**: {s['submitted']:,} jobs submitted at {s['rate']}/s for {s['minutes']:g} minutes, "
        f"{s['delivered']:,} delivered; finished jobs kept {s['age_minutes']:g} minute(s), retention every 10 s "
        f"({s['retention_runs_done']}/{s['retention_runs']} runs done, {s['rows_removed']:,} jobs removed); "
        f"p99 enqueue to delivered {s['p99_s'] * 1000:,.0f} ms.",
        "",
        "| database at half time | at the end | growth over the last half (target < 10 %) |",
        "|---:|---:|---:|",
        f"| {s['db_mb_half']:.1f} MiB | {s['db_mb_end']:.1f} MiB | {s['growth_last_half_pct']:+.1f} % "
        f"{'✅' if s['growth_last_half_pct'] < 10 else '❌'} |",
        "",
        "![retention soak](retention.png)",
    ]
    if a is not None:
        lines += [
            "",
            f"**A/B**: one engine (concurrency 64) drains a backlog of {a['n']:,} jobs (deliveries/s), then takes "
            f"{a['paced_rate']} jobs/s for {a['paced_seconds']:g} s (p99 enqueue to delivered), with "
            f"{a['old_rows']:,} finished rows two days old in the tables; retention on (removing them while it "
            f"delivers) or off; {a['rounds']} rounds, order alternating; median (min-max).",
            "",
            "| retention | deliveries/s (backlog) | p99 enqueue to delivered (paced) |",
            "|---|---:|---:|",
        ]
        for mode in ("off", "on"):
            r = a[mode]
            p99 = f"{r['p99_median_s'] * 1000:,.0f} ms ({r['p99_min_s'] * 1000:,.0f}-{r['p99_max_s'] * 1000:,.0f})"
            lines.append(f"| {mode} | {r['rate_median']:,.0f} ({r['rate_min']:,.0f}-{r['rate_max']:,.0f}) | {p99} |")
        removed = [r["old_rows_removed_during_drain"] for r in a["runs"]["on"]]
        lines += ["", f"Throughput on/off: {a['rate_ratio']:.3f}; p99 on/off: {a['p99_ratio']:.3f}. Old rows "
                  f"removed while the backlog drained ('on' rounds): {', '.join(f'{x:,}' for x in removed)}."]
    return "\n".join(lines)


def chart(s: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    t = [x["t"] for x in s["samples"]]
    ax.plot(t, [x["db_mb"] for x in s["samples"]], color="#d62728", label="database size (MiB)")
    ax.set_xlabel("seconds")
    ax.set_ylabel("MiB")
    ax.set_ylim(0, max(x["db_mb"] for x in s["samples"]) * 1.25)
    ax2 = ax.twinx()
    ax2.plot(t, [x["jobs"] / 1000 for x in s["samples"]], color="#1f77b4", label="job rows (thousands)")
    ax2.plot(t, [x["delivered"] / 1000 for x in s["samples"]], color="#2ca02c", label="delivered (thousands)")
    ax2.set_ylabel("thousands")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [x.get_label() for x in lines], loc="upper left")
    ax.set_title(f"retention soak: {s['rate']}/s, jobs kept {s['age_minutes']:g} min — growth over the last half "
                 f"{s['growth_last_half_pct']:+.1f} %")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=6.0)
    p.add_argument("--rate", type=int, default=300)
    p.add_argument("--age-minutes", type=float, default=1.0)
    p.add_argument("--ab-rounds", type=int, default=3, help="0: no A/B")
    p.add_argument("--ab-n", type=int, default=20_000)
    p.add_argument("--ab-old", type=int, default=200_000)
    p.add_argument("--ab-rate", type=int, default=200, help="jobs a second in the paced part of the A/B")
    p.add_argument("--ab-seconds", type=float, default=30.0)
    p.add_argument("--out", type=Path, default=common.ROOT / "docs" / "benchmarks")
    a = p.parse_args()
    load_before = os.getloadavg()
    with common.sink_process() as (sink_port, _), common.servers() as srv:
        s = soak(srv, sink_port, a.minutes, a.rate, a.age_minutes)
        ab_result = ab(srv, sink_port, a.ab_rounds, a.ab_n, a.ab_old, a.ab_rate, a.ab_seconds) if a.ab_rounds else None
    m = common.machine(load_before)
    a.out.mkdir(parents=True, exist_ok=True)
    chart(s, a.out / "retention.png")
    md = markdown(s, ab_result, m)
    (a.out / "retention.md").write_text(md + "\n")
    (a.out / "retention.json").write_text(json.dumps(
        {"soak": {k: v for k, v in s.items() if k != "samples"}, "ab": ab_result, "machine": m}, indent=2,
        default=float) + "\n")
    print(md)


if __name__ == "__main__":
    main()
