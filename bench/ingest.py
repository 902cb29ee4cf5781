"""Ingestion through the HTTP API, end to end, against the bare-client ceiling (issue 19).

    python -m bench.ingest [--rounds 5] [-n 20000] [-c 64] [--inflight 32] [--batch 100] [--json FILE]
                           [--base OTHER_TREE]

One run starts one PostgreSQL, one Redis (loopback TCP) and one sink process
(bench/sink.py), then, round after round:

1. ceiling: the bare aiohttp loop of bench/compare.py (N payloads at concurrency C);
2. single: one ``ms07 run`` (delivery concurrency C), warm; a client in another process
   (aiohttp, ``--inflight`` requests in flight) POSTs N distributions to
   ``/api/v1/distributions``, one per request, each answered 202;
3. batch: the same with ``--batch`` distributions per request (``{"distributions": [...]}``);
4. prefilled, for reference: the queue filled beforehand, then the engine drains it
   (bench/compare.py's ms07 run: deliveries/s from the sink's first request).

Single and batch are end to end: from the client's first request (enqueue) to the N-th
unique distribution seen by the sink (delivered), on the machine's monotonic clock,
which the client, this process and the sink share. Engine CPU (user+sys of the
``ms07 run`` process) and PostgreSQL CPU (every process of the embedded server) per
1,000 over the same span. Each round's ratio is against that round's ceiling; the
median and the spread (min-max) over the rounds are printed as a Markdown table. This
machine is shared: read the ratios, not the absolute numbers.

``--base OTHER_TREE`` (another checkout, e.g. ``git archive`` of an older commit) also
runs the single and batch modes with that tree's engine in every round, after this tree's
in odd rounds and before them in even ones: a change's effect, measured against the same
ceilings (as bench/ab.py does).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common, compare, systems

MODES = ("ceiling", "single", "batch", "prefilled")
ITEM = {"destinations": ["sink"], "payload": {"report": "x" * 990}}  # ~1 KiB payload, as the ceiling posts


async def _client(port: int, n: int, inflight: int, batch: int) -> dict[str, Any]:
    """POST ``n`` distributions, ``batch`` per request (1: the single-submit body)."""
    import aiohttp

    body = json.dumps(ITEM if batch == 1 else {"distributions": [ITEM] * batch}).encode()
    url = f"http://127.0.0.1:{port}/api/v1/distributions"
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {common.API_TOKEN}"}
    requests = -(-n // batch)
    last_body = body if n % batch == 0 else json.dumps({"distributions": [ITEM] * (n % batch)}).encode()
    accepted, refused = 0, []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=inflight)) as session:
        todo = iter(range(requests))

        async def worker() -> None:
            nonlocal accepted
            for i in todo:
                async with session.post(url, data=last_body if i == requests - 1 else body, headers=headers) as r:
                    data = await r.json()
                    if r.status != 202:
                        refused.append(f"{r.status} {str(data)[:200]}")
                        continue
                    accepted += len(data["distributions"]) if batch > 1 else 1

        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(inflight)))
        seconds = time.monotonic() - start
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"start": start, "seconds": seconds, "accepted": accepted, "refused": refused[:5],
            "cpu": ru.ru_utime + ru.ru_stime}


def client_main(argv: list[str]) -> None:
    """``python -m bench.ingest --client PORT N INFLIGHT BATCH``: prints one JSON line."""
    from ms07.engine.daemon import run_loop

    port, n, inflight, batch = (int(x) for x in argv)
    print(json.dumps(run_loop(_client(port, n, inflight, batch))), flush=True)


def _post(port: int, n: int, inflight: int, batch: int) -> subprocess.Popen[str]:
    return subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "bench.ingest", "--client", str(port), str(n), str(inflight), str(batch)],
        cwd=common.ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "MS07_API_TOKEN": common.API_TOKEN})


def _finish(client: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = client.communicate(timeout=timeout)
    if client.returncode != 0:
        raise RuntimeError(f"the API client failed (exit {client.returncode})")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    if result["refused"]:
        raise RuntimeError(f"the engine refused submissions: {result['refused']}")
    return result


def api_run(system: systems.System, srv: common.Servers, sink_port: int, n: int, inflight: int, batch: int,
            log: Path, tree: Path | None = None) -> dict[str, Any]:
    """A warm engine fed through its API: enqueue -> delivered, end to end."""
    system.reset()
    http_port = common.free_port()
    engine = common.start_engine(system.config, srv, http_port, log=log, tree=tree)
    watch = common.ProcessWatch(engine.pid)
    pg = common.ProcessWatch(pid) if (pid := common.postmaster_pid(srv)) else None
    try:
        warm = max(inflight, min(500, n // 10))  # connections opened, statements prepared
        common.sink_reset(sink_port)
        _finish(_post(http_port, warm, inflight, min(batch, warm)), timeout=120)
        common.wait_delivered(sink_port, warm, None, timeout=120)
        common.sink_reset(sink_port)
        cpu0, pg0 = watch.cpu_seconds(), pg.cpu_seconds() if pg else 0.0
        client = _post(http_port, n, inflight, batch)
        delivered = common.wait_delivered(sink_port, n, None, timeout=max(120.0, n / 50))
        cpu1, pg1 = watch.cpu_seconds(), pg.cpu_seconds() if pg else 0.0
        posted = _finish(client, timeout=60)
        time.sleep(0.3)  # late duplicates, if any, arrive now
        stats = common.sink_stats(sink_port)
    finally:
        engine.send_signal(signal.SIGTERM)
        engine.wait(60)
        watch.stop()
        if pg:
            pg.stop()
    span = stats["last"] - posted["start"]
    if posted["accepted"] != n:
        raise RuntimeError(f"{posted['accepted']:,} of {n:,} accepted")
    return {
        "rate": n / span,
        "delivered_rate": delivered.rate,  # the sink's own: first delivery -> N-th
        "submit_rate": n / posted["seconds"],
        "cpu_per_1000": (cpu1 - cpu0) / n * 1000,
        "pg_cpu_per_1000": (pg1 - pg0) / n * 1000,
        "client_cpu_per_1000": posted["cpu"] / n * 1000,
        "unique": stats["unique"],
        "duplicates": stats["duplicates"],
        "n": n,
    }


def run(a: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"n": a.n, "concurrency": a.concurrency, "inflight": a.inflight, "batch": a.batch,
                               "rounds": a.rounds, "machine": common.machine(os.getloadavg())}
    modes = [*MODES, *(["single (base)", "batch (base)"] if a.base else [])]
    raw: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    tmp = Path(tempfile.mkdtemp(prefix="ms07-ingest-"))
    with common.sink_process() as (sink_port, _), common.servers(redis_tcp=True) as srv:
        url = f"http://127.0.0.1:{sink_port}/in"
        system = systems.System("ms07", srv, sink_port, a.concurrency, tmp)
        for r in range(a.rounds):
            order = modes
            if r % 2:  # the base tree first in every other round: a burst of load hits both alike
                order = [*MODES[:1], *modes[len(MODES):], *MODES[1:]]
            for mode in order:
                log = tmp / f"{mode.split()[0]}-{r}{'-base' if 'base' in mode else ''}.log"
                if mode == "ceiling":
                    res = compare.client_run("aiohttp", url, a.n, a.concurrency, sink_port)
                elif mode == "prefilled":
                    res = compare.queue_run(system, a.n, sink_port, tmp, r)
                else:
                    batch = 1 if mode.startswith("single") else a.batch
                    res = api_run(system, srv, sink_port, a.n, a.inflight, batch, log,
                                  a.base if "base" in mode else None)
                if res["unique"] != a.n or res["duplicates"]:
                    raise RuntimeError(f"{mode}: {res['unique']:,} of {a.n:,} delivered, "
                                       f"{res['duplicates']} duplicates")
                raw[mode].append(res)
            ceiling = raw["ceiling"][-1]["rate"]
            for mode in modes:
                raw[mode][-1]["ratio"] = raw[mode][-1]["rate"] / ceiling
            print(f"[round {r + 1}] " + ", ".join(
                f"{m} {raw[m][-1]['rate']:,.0f}/s ({raw[m][-1]['ratio']:.2f}x)" for m in modes), flush=True)
    results["modes"] = {m: {"rounds": rs, **{f"{k}_median": statistics.median(x[k] for x in rs)
                                             for k in ("rate", "ratio", "cpu_per_1000")}}
                        for m, rs in raw.items()}
    for m in modes:
        if m.split()[0] not in ("single", "batch"):
            continue
        for k in ("pg_cpu_per_1000", "client_cpu_per_1000"):
            results["modes"][m][f"{k}_median"] = statistics.median(x[k] for x in raw[m])
    results["machine"]["load_after"] = os.getloadavg()
    results["logs"] = str(tmp)
    if a.base:
        results["base"] = str(a.base)
    return results


LABELS = {
    "ceiling": "bare aiohttp loop (ceiling)",
    "single": "API, 1 distribution per request",
    "batch": "API, {batch} distributions per request",
    "prefilled": "queue filled beforehand (reference)",
}


def _label(mode: str, results: dict[str, Any]) -> str:
    name, _, base = mode.partition(" ")
    label = LABELS[name].format(batch=results["batch"])
    return f"{label}, base tree" if base else label


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"N = {results['n']:,} distributions of 1 KiB JSON per mode and round, delivery concurrency "
        f"{results['concurrency']}, {results['inflight']} API requests in flight, {results['rounds']} rounds; "
        f"{m['cpus']} CPUs, Python {m['python']}, {m['date']}, load average {m['load_before'][0]:.1f} before / "
        f"{m['load_after'][0]:.1f} after (shared machine).",
        "",
        "| mode | × ceiling per round | median × ceiling (min-max) | median /s | engine CPU s / 1k "
        "| PostgreSQL CPU s / 1k | API client CPU s / 1k |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for mode, res in results["modes"].items():
        ratios = [x["ratio"] for x in res["rounds"]]
        pg = res.get("pg_cpu_per_1000_median")
        client = res.get("client_cpu_per_1000_median")
        lines.append(
            f"| {_label(mode, results)} | {', '.join(f'{x:.2f}' for x in ratios)} | "
            f"{res['ratio_median']:.2f} ({min(ratios):.2f}-{max(ratios):.2f}) | {res['rate_median']:,.0f} | "
            f"{res['cpu_per_1000_median']:.3f}{' (client)' if mode == 'ceiling' else ''} | "
            f"{'–' if pg is None else f'{pg:.3f}'} | {'–' if client is None else f'{client:.3f}'} |")
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["--client"]:
        client_main(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=20_000, help="distributions per mode and round")
    p.add_argument("-c", "--concurrency", type=int, default=64, help="deliveries in flight (ceiling and engine)")
    p.add_argument("--inflight", type=int, default=32, help="API requests in flight")
    p.add_argument("--batch", type=int, default=100, help="distributions per request in the batch mode")
    p.add_argument("--rounds", type=int, default=5, help="rounds; medians and min-max are reported")
    p.add_argument("--json", type=Path, help="write every round's numbers here")
    p.add_argument("--base", type=Path, help="another source tree: its engine runs the API modes too, each round")
    a = p.parse_args()
    for name in ("n", "concurrency", "inflight", "batch", "rounds"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be at least 1")
    if a.batch > 100:
        p.error("--batch must be at most 100 (the engine's service.max_batch_items)")
    if a.base is not None:
        a.base = a.base.resolve()
        if not (a.base / "ms07" / "engine" / "engine.py").is_file():
            p.error(f"--base {a.base} has no ms07/engine/engine.py")
        if common.ms07_origin(a.base) != a.base / "ms07":
            p.error(f"--base {a.base}: its engine would not import its own ms07")
    results = run(a)
    if a.json:
        a.json.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
