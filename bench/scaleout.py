"""Scale-out: 1, 2 and 4 engine processes on the same consumer group.

    python -m bench.scaleout [-n 20000] [-c 64] [--processes 1,2,4] [--runs 3]

For each count: the queue is filled with N distributions, then that many ``ms07 run``
processes (same config, same consumer group, each at concurrency C) start together and
deliver them all. deliveries/s is read from the sink between 10 % and 90 % of N delivered
(the processes start within a second of each other; the first one should not count
alone), CPU is the sum over the processes from the first delivery to the last; the bare
aiohttp ceiling is measured in the same run. On a 2-core machine more processes than cores
cannot add CPU: the point is that the group shares the work without losses or duplicates,
and what the second core adds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench import common


def run(n: int, concurrency: int, counts: list[int], runs: int) -> dict[str, Any]:
    from ms07.config import load_settings
    from ms07.engine.daemon import run_loop

    load_before = os.getloadavg()
    raw: dict[int, list[dict[str, Any]]] = {k: [] for k in counts}
    ceilings: list[float] = []
    with common.sink_process() as (sink_port, _), common.servers() as srv:
        tmp = Path(tempfile.mkdtemp(prefix="ms07-scaleout-"))
        config = common.write_config(tmp / "config.yaml", sink_port, concurrency)
        settings = load_settings(
            config, environ={}, database_url=srv.database_url, redis_url=srv.redis_url
        )
        url = f"http://127.0.0.1:{sink_port}/in"
        for _ in range(runs):
            common.sink_reset(sink_port)
            run_loop(common.ceiling_aiohttp(url, n, concurrency))
            ceilings.append(common.wait_delivered(sink_port, n, None, 60).rate)
            for k in counts:
                common.reset_state(srv)
                asyncio.run(common.fill(settings, n))
                common.sink_reset(sink_port)
                engines = [
                    common.start_engine(
                        config, srv, common.free_port(), log=tmp / f"engine-{k}-{i}.log", wait=False
                    )
                    for i in range(k)
                ]
                watches = [common.ProcessWatch(e.pid) for e in engines]
                tree = _Sum(watches)
                progress: list[tuple[float, int]] = []
                d = common.wait_delivered(
                    sink_port,
                    n,
                    tree,
                    timeout=max(300.0, n / 50),  # type: ignore[arg-type]
                    progress=progress,
                )
                for e in engines:
                    e.send_signal(signal.SIGTERM)
                codes = [e.wait(60) for e in engines]
                for w in watches:
                    w.stop()
                stats = common.sink_stats(sink_port)
                raw[k].append(
                    {
                        "rate": common.window_rate(progress, n),
                        "first_to_last": d.rate,
                        "cpu_per_1000": d.cpu_seconds / n * 1000,
                        "peak_rss_mb": sum(w.peak_rss for w in watches) / 2**20,
                        "unique": stats["unique"],
                        "duplicates": stats["duplicates"],
                        "exit_codes": codes,
                    }
                )
                print(f"{k} process(es): {raw[k][-1]['rate']:,.0f}/s", flush=True)
    out = {
        "n": n,
        "concurrency": concurrency,
        "runs": runs,
        "ceiling": statistics.median(ceilings),
        "processes": {},
        "machine": common.machine(load_before),
    }
    for k, rs in raw.items():
        out["processes"][k] = {
            "rate": statistics.median(r["rate"] for r in rs),
            "cpu_per_1000": statistics.median(r["cpu_per_1000"] for r in rs),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in rs),
            "unique": min(r["unique"] for r in rs),
            "duplicates": max(r["duplicates"] for r in rs),
            "exit_codes": [c for r in rs for c in r["exit_codes"]],
        }
    return out


class _Sum:
    """CPU of several watched processes, read as one."""

    def __init__(self, watches: list[common.ProcessWatch]) -> None:
        self.watches = watches

    def cpu_seconds(self) -> float:
        return sum(w.cpu_seconds() for w in self.watches)


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    one = r["processes"][min(r["processes"])]["rate"]
    rows = [
        "| engine processes | deliveries/s | × 1 process | × ceiling | CPU s / 1k (all processes) "
        "| peak RSS MiB (sum) | sink unique / duplicates |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for k, x in r["processes"].items():
        rows.append(
            f"| {k} | {x['rate']:,.0f} | {x['rate'] / one:.2f} | {x['rate'] / r['ceiling']:.2f} "
            f"| {x['cpu_per_1000']:.2f} | {x['peak_rss_mb']:.0f} | {x['unique']:,} / {x['duplicates']:,} |"
        )
    return "\n".join(
        [
            "# Scale-out: engine processes on one consumer group",
            "",
            f"N = {r['n']:,} × 1 KiB, concurrency {r['concurrency']} per process, median of {r['runs']} run(s), "
            "deliveries/s between 10 % and 90 % delivered; "
            f"bare aiohttp ceiling in the same run {r['ceiling']:,.0f}/s; {m['cpus']} CPUs, Python {m['python']}, "
            f"{m['date']}, load average {m['load_before'][0]:.1f} before / {m['load_after'][0]:.1f} after "
            "(shared machine; the sink, PostgreSQL and Redis share the same cores).",
            "",
            *rows,
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=20_000)
    p.add_argument("-c", "--concurrency", type=int, default=64)
    p.add_argument("--processes", default="1,2,4")
    p.add_argument("--runs", type=int, default=3, help="rounds; medians are reported")
    p.add_argument("--out", type=Path, default=common.ROOT / "docs" / "benchmarks")
    p.add_argument("--no-readme", action="store_true", help="do not update the table in docs/benchmarks/README.md")
    a = p.parse_args()
    r = run(a.n, a.concurrency, [int(x) for x in a.processes.split(",")], a.runs)
    md = markdown(r)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "scaleout.md").write_text(md + "\n")
    (a.out / "scaleout.json").write_text(json.dumps(r, indent=2) + "\n")
    if not a.no_readme:
        from bench import report

        report.update_readme(common.ROOT / "docs" / "benchmarks" / "README.md", "scaleout",
                             "\n".join(md.splitlines()[2:]))
    print(md)


if __name__ == "__main__":
    main()
