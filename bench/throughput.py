"""Engine throughput against the bare-client ceiling, measured in one run.

    python -m bench.throughput [-n 20000] [-c 64]

1. ceiling: a bare aiohttp loop posting the same 1 KiB payloads to the same sink at the
   same concurrency; references: bare httpx (default transport) and httpx on the
   httpx-aiohttp transport (smaller N: they are slow);
2. ms07: the queue is filled with N distributions, then one `ms07 run` process delivers
   them all, every attempt recorded in PostgreSQL: deliveries/s, CPU seconds per 1,000,
   peak RSS;
3. latency: distributions submitted at half the measured rate by a separate process
   (this one, through the library: the engine process is not also the submitter, as an
   API pod or a producing service would not be); p50/p95/p99 submit -> delivered from
   the job rows;
4. submission alone: POST /api/v1/distributions throughput (the engine's own API).

The ceiling runs on the same event loop as the engine (uvloop when installed), so the
ratio compares clients, not loops.

The sink runs in its own process. Results print as a Markdown table (ratios against the
ceiling measured in the same run: this machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common


async def _api_load(port: int, n: int, concurrency: int, rate: float | None) -> tuple[float, list[str]]:
    """POST n distributions; paced at ``rate``/s when given. Returns (requests/s, ids)."""
    import aiohttp

    ids: list[str] = []
    body = json.dumps({"destinations": ["sink"], "payload": {"report": "x" * 990}}).encode()
    url = f"http://127.0.0.1:{port}/api/v1/distributions"
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {common.API_TOKEN}"}
    t0 = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        counter = iter(range(n))

        async def worker() -> None:
            for i in counter:
                if rate:
                    delay = t0 + i / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                async with session.post(url, data=body, headers=headers) as r:
                    data = await r.json()
                    ids.append(data["distributions"][0]["distribution_id"])

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - t0), ids


async def _paced_library_submit(settings: Any, n: int, rate: float, concurrency: int = 16) -> tuple[float, list[str]]:
    from ms07.ops.submit import submit
    from ms07.runtime import Runtime

    ids: list[str] = []
    async with Runtime(settings, migrate=False, pool_size=concurrency) as rt:
        q = await rt.queue()
        await rt.pool()
        counter = iter(range(n))
        t0 = time.perf_counter()

        async def worker() -> None:
            async with rt.connection() as conn:
                for i in counter:
                    delay = t0 + i / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    r = await submit(conn, q, settings, ["sink"], {"report": "x" * 990})
                    ids.append(r.distributions[0]["distribution_id"])

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return n / (time.perf_counter() - t0), ids


def _latencies(database_url: str, ids: list[str]) -> list[float]:
    import psycopg

    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT EXTRACT(EPOCH FROM completed_at - created_at) FROM distribution_jobs "
            "WHERE distribution_id = ANY(%s::uuid[]) AND status = 'delivered'", (ids,)).fetchall()
    return [float(r[0]) for r in rows]


def run(n: int, concurrency: int, ref_n: int) -> dict[str, Any]:
    results: dict[str, Any] = {"n": n, "concurrency": concurrency}
    with common.sink_process() as (sink_port, _), common.servers() as srv:
        url = f"http://127.0.0.1:{sink_port}/in"
        from ms07.engine.daemon import run_loop

        results["ceiling_aiohttp"] = run_loop(common.ceiling_aiohttp(url, n, concurrency))
        results["httpx_default"] = asyncio.run(common.ceiling_httpx(url, ref_n, concurrency))
        results["httpx_aiohttp"] = asyncio.run(common.ceiling_httpx(url, ref_n, concurrency, "aiohttp"))
        common.sink_reset(sink_port)

        tmp = Path(tempfile.mkdtemp(prefix="ms07-tp-"))
        config = common.write_config(tmp / "config.yaml", sink_port, concurrency)
        from ms07.config import load_settings

        settings = load_settings(config, environ={}, database_url=srv.database_url, redis_url=srv.redis_url)
        common.reset_state(srv)
        results["fill_seconds"] = asyncio.run(common.fill(settings, n))
        http_port = common.free_port()
        # Not waiting for /health/live: the engine delivers before it answers, and those
        # deliveries (and their CPU) must fall inside the measured span.
        engine = common.start_engine(config, srv, http_port, log=tmp / "engine.log", wait=False)
        watch = common.ProcessWatch(engine.pid)
        delivered = common.wait_delivered(sink_port, n, watch, timeout=max(120, n / 100))
        common.wait_http(f"http://127.0.0.1:{http_port}/health/live", timeout=60)
        time.sleep(0.5)  # the last outcomes commit after the sink saw them
        results["ms07_rate"] = delivered.rate
        results["ms07_cpu_per_1000"] = delivered.cpu_seconds / n * 1000
        results["ms07_peak_rss_mb"] = watch.peak_rss / 1048576
        stats = common.sink_stats(sink_port)
        results["sink_unique"], results["sink_duplicates"] = stats["unique"], stats["duplicates"]
        import psycopg

        with psycopg.connect(srv.database_url) as conn:
            results["attempt_rows"] = conn.execute("SELECT count(*) FROM distribution_attempts").fetchone()[0]
            results["delivered_rows"] = conn.execute(
                "SELECT count(*) FROM distribution_jobs WHERE status = 'delivered'").fetchone()[0]

        # Submission through the API alone, then latency at half the peak rate.
        common.sink_reset(sink_port)
        api_rate, _ = asyncio.run(_api_load(http_port, min(n, 5000), 32, None))
        results["api_submit_rate"] = api_rate
        common.wait_delivered(sink_port, min(n, 5000), None, timeout=120)
        common.sink_reset(sink_port)
        half = results["ms07_rate"] / 2
        paced_n = int(min(half * 10, n))
        rate, ids = asyncio.run(_paced_library_submit(settings, paced_n, half))
        common.wait_delivered(sink_port, paced_n, None, timeout=120)
        time.sleep(0.5)  # the last outcomes commit after the sink saw them (a benchmark, not a test)
        lat = _latencies(srv.database_url, ids)
        results["latency_rate"] = rate
        results["latency_p50_ms"] = common.percentile(lat, 0.50) * 1000
        results["latency_p95_ms"] = common.percentile(lat, 0.95) * 1000
        results["latency_p99_ms"] = common.percentile(lat, 0.99) * 1000
        engine.send_signal(signal.SIGTERM)
        results["engine_exit"] = engine.wait(60)
        watch.stop()
    return results


def table(r: dict[str, Any]) -> str:
    ceiling = r["ceiling_aiohttp"]
    rows = [
        ("bare aiohttp loop (ceiling)", f"{ceiling:,.0f}/s", "1.00"),
        ("bare httpx, default transport", f"{r['httpx_default']:,.0f}/s", f"{r['httpx_default'] / ceiling:.2f}"),
        ("httpx on httpx-aiohttp transport", f"{r['httpx_aiohttp']:,.0f}/s", f"{r['httpx_aiohttp'] / ceiling:.2f}"),
        ("ms07 run, 1 process, all attempts in PostgreSQL", f"{r['ms07_rate']:,.0f}/s",
         f"{r['ms07_rate'] / ceiling:.2f}"),
        ("POST /api/v1/distributions (submit only)", f"{r['api_submit_rate']:,.0f}/s",
         f"{r['api_submit_rate'] / ceiling:.2f}"),
    ]
    out = [f"N = {r['n']:,} x 1 KiB, concurrency {r['concurrency']}", "",
           "| path | rate | x ceiling |", "|---|---:|---:|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    out += ["", f"- ms07 CPU: {r['ms07_cpu_per_1000']:.2f} s per 1,000 deliveries; peak RSS "
                f"{r['ms07_peak_rss_mb']:.0f} MiB; attempt rows {r['attempt_rows']:,}, delivered rows "
                f"{r['delivered_rows']:,}; sink unique {r['sink_unique']:,}, duplicates {r['sink_duplicates']}",
            f"- submit -> delivered at {r['latency_rate']:,.0f}/s (half the peak): p50 {r['latency_p50_ms']:.1f} ms, "
            f"p95 {r['latency_p95_ms']:.1f} ms, p99 {r['latency_p99_ms']:.1f} ms",
            f"- engine exit code after SIGTERM: {r['engine_exit']}"]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=20_000)
    p.add_argument("-c", "--concurrency", type=int, default=64)
    p.add_argument("--ref-n", type=int, default=3000, help="N for the httpx references")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    r = run(a.n, a.concurrency, a.ref_n)
    print(json.dumps(r, indent=2) if a.json else table(r))


if __name__ == "__main__":
    main()
