"""ms07 side by side with Celery, arq and taskiq, against the bare-client ceiling.

    python -m bench.compare [-n 20000] [-c 64] [--rounds 5] [--systems ms07,ms07-w2,celery,arq,taskiq]
                            [--rates 250,500,1000,2000,4000]

One run starts one PostgreSQL, one Redis (loopback TCP, AOF everysec) and one sink
process (bench/sink.py), then, round after round (``--rounds``, default 5):

1. ceiling: a bare aiohttp loop posting N payloads at concurrency C; references: bare
   httpx (default transport) and httpx on the httpx-aiohttp transport (``--ref-n``);
2. each queue in turn: its producer (a subprocess) enqueues N jobs, then one worker
   process (tree) at concurrency C delivers them all to the sink (``ms07-w2``: ms07 under
   ``ms07 run --workers 2``, C per engine).

Every target is judged on the median of the per-round ratios (a round runs every system
within minutes, under the same load from the machine's other tenants) and reported with
their spread (min-max); fewer than 5 rounds judge nothing.

Deliveries/s is measured by the receiver, from its first request to its N-th unique
Idempotency-Key, so worker start-up is excluded for everyone; CPU is user+sys of the
worker's process tree (psutil) over that same span; the producer's CPU is reported
apart. Then, once per queue, latency: a warm worker, and a producer paced at half that
queue's own median rate for ``--latency-seconds`` (``--latency-runs`` rounds, medians
reported); every payload carries its enqueue time and the sink records now - enqueue at
arrival (same method for all four); the first ``WARMUP_SECONDS`` of each paced run (a new
producer process warming up) are left out of the percentiles, for every system. And
latency at common offered rates (``--rates``): every system paced at the same rates for
``--rate-seconds`` (``--rate-runs`` rounds, medians), each rate only where it is at most
``KEEPS_UP`` of that system's median peak (a system paced past its peak measures its
backlog, not its latency).

Writes docs/benchmarks/compare.{md,png,json} and the table into the README between the
``<!-- bench:compare -->`` markers. Peers install into their own virtual environments
(bench/systems.py). This machine is shared: read the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import common, report, systems

QUEUES = ("ms07", "ms07-w2", "celery", "arq", "taskiq")
MIN_ROUNDS = 5  # fewer per-round ratios judge no target
KEEPS_UP = 0.8  # a common rate is run for a system whose median peak is at least rate / KEEPS_UP
# Each paced run starts a new producer process: its first second (connections opened,
# first statements planned on fresh PostgreSQL backends) is its warm-up, not the steady
# state the latency target is about. Left out for every system alike; the percentiles
# with it are kept in the results as *_all_ms.
WARMUP_SECONDS = 1.0


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def client_run(kind: str, url: str, n: int, c: int, sink_port: int) -> dict[str, float]:
    """A bare client in this process, on uvloop like the engine: rate seen by the sink."""
    from ms07.engine.daemon import run_loop

    common.sink_reset(sink_port)
    cpu0 = _cpu()
    if kind == "aiohttp":
        run_loop(common.ceiling_aiohttp(url, n, c))
    else:
        run_loop(
            common.ceiling_httpx(url, n, c, "aiohttp" if kind == "httpx-aiohttp" else "default")
        )
    cpu = _cpu() - cpu0
    d = common.wait_delivered(sink_port, n, None, timeout=60)
    return {
        "rate": d.rate,
        "cpu_per_1000": cpu / n * 1000,
        "unique": d.unique,
        "duplicates": d.duplicates,
        "n": n,
    }


def queue_run(system: systems.System, n: int, sink_port: int, tmp: Path, r: int) -> dict[str, Any]:
    system.reset()
    produced = system.produce(n, prefix=f"r{r}")
    common.sink_reset(sink_port)
    worker = system.start(tmp / f"{system.name}-{r}.log")
    watch = common.ProcessWatch(worker.pid)
    try:
        d = common.wait_delivered(sink_port, n, watch, timeout=max(300.0, n / 50))
        time.sleep(0.3)  # late duplicates, if any, arrive now
        stats = common.sink_stats(sink_port)
    finally:
        exit_code = system.stop()
        watch.stop()
    return {
        "rate": d.rate,
        "cpu_per_1000": d.cpu_seconds / n * 1000,
        "peak_rss_mb": watch.peak_rss / 2**20,
        "unique": stats["unique"],
        "duplicates": stats["duplicates"],
        "n": n,
        "exit_code": exit_code,
        "producer_rate": produced.rate,
        "producer_cpu_per_1000": produced.cpu / n * 1000,
        **system.recorded(),
    }


def latency_run(
    system: systems.System,
    rate: float,
    seconds: float,
    sink_port: int,
    tmp: Path,
    after_warm: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Warm worker; a producer paced at ``rate``; enqueue -> delivered at the sink.
    ``after_warm`` runs between the warm-up and the paced part (bench/latency.py empties
    the job tables there, so that only the paced jobs are split into stages)."""
    system.reset()
    common.sink_reset(sink_port)
    system.start(tmp / f"{system.name}-latency.log")
    try:
        warm = 200
        system.produce(warm, prefix="warm")
        common.wait_delivered(sink_port, warm, None, timeout=120)
        time.sleep(1.0)
        if after_warm is not None:
            after_warm()
        common.sink_reset(sink_port)
        n = max(100, int(rate * seconds))
        produced = system.produce(n, rate=rate, prefix="lat")
        common.wait_delivered(sink_port, n, None, timeout=max(120.0, seconds * 10))
        lat = common.sink_latency(sink_port, skip=WARMUP_SECONDS)
        everything = common.sink_latency(sink_port)
    finally:
        system.stop()
    return {
        "offered_rate": rate,
        "achieved_rate": produced.rate,
        "n": n,
        "warmup_seconds": WARMUP_SECONDS,
        "warmup_left_out": lat["skipped"],
        **_ms(lat, ("p50", "p95", "p99", "max"), "_ms"),
        **_ms(everything, ("p50", "p95", "p99"), "_all_ms"),
    }


def _ms(lat: dict[str, float | None], keys: tuple[str, ...], suffix: str) -> dict[str, float | None]:
    """The sink's percentiles (seconds) in milliseconds, named ``<key><suffix>``."""
    return {f"{k}{suffix}": (lat[k] * 1000 if lat[k] is not None else None) for k in keys}


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
        if isinstance(value, int | float) and len(values) == len(runs):
            out[key] = statistics.median(values)
        else:
            out[key] = value
    for key in ("unique", "duplicates"):  # a loss or a duplicate in any run must show
        if runs and key in runs[0]:
            out[key] = (min if key == "unique" else max)(r[key] for r in runs)
    out["runs"] = [r["rate"] for r in runs]
    out["cpu_runs"] = [r["cpu_per_1000"] for r in runs]
    return out


def common_rates(a: argparse.Namespace, results: dict[str, Any], queues: dict[str, systems.System],
                 sink_port: int, tmp: Path) -> dict[str, dict[str, Any]]:
    """{rate: {system: medians of its paced runs, or {"skipped": why}}}: every system at the same
    offered rates, rounds alternating the systems."""
    rates = [float(x) for x in a.rates.split(",") if x.strip()]
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {f"{r:g}": {n: [] for n in queues} for r in rates}
    for rnd in range(a.rate_runs):
        for rate in rates:
            for name, system in queues.items():
                if results["systems"][name]["rate"] * KEEPS_UP < rate:
                    continue
                x = latency_run(system, rate, a.rate_seconds, sink_port, tmp)
                runs[f"{rate:g}"][name].append(x)
                print(f"[rates {rnd + 1}] {name} at {rate:,.0f}/s: p50 {x['p50_ms']:.1f} p99 {x['p99_ms']:.1f} ms",
                      flush=True)
    out: dict[str, dict[str, Any]] = {}
    for rate, by in runs.items():
        out[rate] = {}
        for name, xs in by.items():
            if not xs:
                peak = results["systems"][name]["rate"]
                out[rate][name] = {"skipped": f"peak {peak:,.0f}/s < rate / {KEEPS_UP:g}"}
                continue
            out[rate][name] = {k: statistics.median(x[k] for x in xs) for k in
                               ("achieved_rate", "p50_ms", "p95_ms", "p99_ms", "max_ms")
                               if all(x[k] is not None for x in xs)}
            out[rate][name]["p99_runs"] = [x["p99_ms"] for x in xs]
    return out


def run(a: argparse.Namespace) -> dict[str, Any]:
    names = [s for s in a.systems.split(",") if s]
    unknown = set(names) - set(QUEUES)
    if unknown:
        raise SystemExit(
            f"unknown system(s): {', '.join(sorted(unknown))} (known: {', '.join(QUEUES)})"
        )
    results: dict[str, Any] = {
        "n": a.n,
        "concurrency": a.concurrency,
        "runs": a.runs,
        "min_rounds": MIN_ROUNDS,
        "ref_n": a.ref_n,
        "machine": common.machine(os.getloadavg()),
        "settings": {k: v for k, v in systems.SETTINGS.items() if k in names},
    }
    raw: dict[str, list[dict[str, Any]]] = {
        k: [] for k in ["aiohttp", "httpx", "httpx-aiohttp", *names]
    }
    tmp = Path(tempfile.mkdtemp(prefix="ms07-compare-"))
    with common.sink_process() as (sink_port, _), common.servers(redis_tcp=True) as srv:
        url = f"http://127.0.0.1:{sink_port}/in"
        queues = {name: systems.System(name, srv, sink_port, a.concurrency, tmp) for name in names}
        results["versions"] = {name: systems.versions(name) for name in names}
        for r in range(a.runs):  # rounds, so that a burst of load elsewhere hits every system
            for kind, n in (("aiohttp", a.n), ("httpx", a.ref_n), ("httpx-aiohttp", a.ref_n)):
                raw[kind].append(client_run(kind, url, n, a.concurrency, sink_port))
                print(f"[round {r + 1}] {kind}: {raw[kind][-1]['rate']:,.0f}/s", flush=True)
            for name, system in queues.items():
                raw[name].append(queue_run(system, a.n, sink_port, tmp, r))
                print(f"[round {r + 1}] {name}: {raw[name][-1]['rate']:,.0f}/s", flush=True)
        results["systems"] = {k: median_of(v) for k, v in raw.items()}
        if a.latency_seconds > 0:
            lat: dict[str, list[dict[str, Any]]] = {name: [] for name in queues}
            for r in range(a.latency_runs):
                for name, system in queues.items():
                    half = results["systems"][name]["rate"] / 2
                    lat[name].append(latency_run(system, half, a.latency_seconds, sink_port, tmp))
                    print(
                        f"[latency {r + 1}] {name} at {half:,.0f}/s: p99 {lat[name][-1]['p99_ms']:.1f} ms",
                        flush=True,
                    )
            for name, runs in lat.items():
                results["systems"][name]["latency"] = {
                    **{k: statistics.median(x[k] for x in runs) for k in runs[0] if k != "n"},
                    "n": runs[0]["n"],
                    "p99_runs": [x["p99_ms"] for x in runs],
                }
        if a.rates and a.rate_seconds > 0:
            results["common_rates"] = common_rates(a, results, queues, sink_port, tmp)
            results["rate_seconds"], results["rate_runs"] = a.rate_seconds, a.rate_runs
    results["machine"]["load_after"] = os.getloadavg()
    results["logs"] = str(tmp)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=20_000, help="distributions per system and run")
    p.add_argument(
        "-c", "--concurrency", type=int, default=64, help="deliveries in flight, every system"
    )
    p.add_argument("--rounds", "--runs", dest="runs", type=int, default=MIN_ROUNDS,
                   help=f"rounds; targets are judged on the median of the per-round ratios (at least {MIN_ROUNDS})")
    p.add_argument(
        "--ref-n", type=int, default=3000, help="N for the httpx references (httpx is slow)"
    )
    p.add_argument(
        "--latency-seconds", type=float, default=10.0, help="paced run length; 0 skips it"
    )
    p.add_argument(
        "--latency-runs", type=int, default=3, help="paced runs per system; medians are reported"
    )
    p.add_argument("--rates", default="250,500,1000,2000,4000",
                   help="common offered rates (per second) every system is paced at; empty skips them")
    p.add_argument("--rate-seconds", type=float, default=5.0, help="paced run length at each common rate")
    p.add_argument("--rate-runs", type=int, default=3, help="paced runs per system and common rate; medians")
    p.add_argument("--systems", default=",".join(QUEUES))
    p.add_argument("--out", type=Path, default=common.ROOT / "docs" / "benchmarks")
    p.add_argument("--no-readme", action="store_true", help="do not update the README's table")
    a = p.parse_args()
    results = run(a)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "compare.json").write_text(json.dumps(results, indent=2) + "\n")
    md = report.compare_markdown(results)
    (a.out / "compare.md").write_text(md + "\n")
    report.compare_chart(results, a.out / "compare.png")
    if not a.no_readme:
        report.update_readme(
            common.ROOT / "README.md", "compare", report.compare_table(results, readme=True)
        )
    print(md)


if __name__ == "__main__":
    main()
