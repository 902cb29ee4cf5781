"""Soak: 200,000 deliveries through one engine process; does its memory stay flat?

    python -m bench.soak [-n 200000] [-c 64] [--warmup 0.2]

The queue is filled in bulk (jobs in PostgreSQL, entries in the stream), then one
``ms07 run`` delivers them all to the sink process while the engine's RSS is sampled
every second. Growth after warm-up compares the median RSS of the last 10 samples with
the median of the 10 samples after the warm-up (the first ``--warmup`` fraction of the
deliveries): target under 5 %. Prints a Markdown summary, writes docs/benchmarks/soak.png
(RSS and delivered count over time) and soak.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common


def run(n: int, concurrency: int, warmup: float) -> dict[str, Any]:
    from ms07.config import load_settings

    load_before = os.getloadavg()
    with common.sink_process() as (sink_port, _), common.servers() as srv:
        tmp = Path(tempfile.mkdtemp(prefix="ms07-soak-"))
        config = common.write_config(tmp / "config.yaml", sink_port, concurrency)
        settings = load_settings(
            config, environ={}, database_url=srv.database_url, redis_url=srv.redis_url
        )
        common.reset_state(srv)
        fill_s = asyncio.run(common.fill(settings, n, chunk=2000))
        engine = common.start_engine(
            config, srv, common.free_port(), log=tmp / "engine.log", wait=False
        )
        watch = common.ProcessWatch(engine.pid, interval=1.0)
        progress: list[tuple[float, int]] = []  # (seconds since start, unique delivered)
        t0 = time.monotonic()
        deadline = t0 + max(600.0, n / 100)
        while True:
            unique = common.sink_stats(sink_port)["unique"]
            progress.append((time.monotonic() - t0, unique))
            if unique >= n or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        stats = common.sink_stats(sink_port)
        engine.send_signal(signal.SIGTERM)
        exit_code = engine.wait(60)
        watch.stop()
    samples = [(t, rss / 2**20) for t, rss in watch.samples]
    # The warm-up ends when the engine has delivered the first `warmup` fraction.
    warm_t = next((t for t, u in progress if u >= warmup * n), progress[-1][0])
    after = [m for t, m in samples if t >= warm_t]
    start = statistics.median(after[:10]) if after else float("nan")
    end = statistics.median(after[-10:]) if after else float("nan")
    span = max(stats["last"] - stats["first"], 1e-9)  # the sink's first request to its last new key
    return {
        "n": n,
        "concurrency": concurrency,
        "fill_seconds": fill_s,
        "delivered": stats["unique"],
        "duplicates": stats["duplicates"],
        "seconds": span,
        "rate": (stats["unique"] - 1) / span,
        "warmup_ends_s": warm_t,
        "rss_after_warmup_mb": start,
        "rss_end_mb": end,
        "rss_peak_mb": watch.peak_rss / 2**20,
        "growth_pct": (end - start) / start * 100,
        "exit_code": exit_code,
        "samples": samples,
        "progress": progress,
        "machine": common.machine(load_before),
    }


def markdown(r: dict[str, Any]) -> str:
    ok = r["growth_pct"] < 5 and r["delivered"] >= r["n"]
    m = r["machine"]
    return "\n".join(
        [
            "# Soak: one engine process, RSS over time",
            "",
            f"{r['n']:,} deliveries of 1 KiB, concurrency {r['concurrency']}; {m['cpus']} CPUs, Python "
            f"{m['python']}, {m['date']}, load average {m['load_before'][0]:.1f} before / "
            f"{m['load_after'][0]:.1f} after (shared machine).",
            "",
            "| delivered (sink, unique / duplicates) | deliveries/s | RSS after warm-up | RSS at the end | peak RSS "
            "| growth after warm-up (target < 5 %) |",
            "|---|---:|---:|---:|---:|---:|",
            f"| {r['delivered']:,} / {r['duplicates']:,} | {r['rate']:,.0f} | {r['rss_after_warmup_mb']:.1f} MiB "
            f"| {r['rss_end_mb']:.1f} MiB | {r['rss_peak_mb']:.1f} MiB | {r['growth_pct']:+.1f} % "
            f"{'✅' if ok else '❌'} |",
            "",
            "![soak](soak.png)",
            "",
            f"Warm-up: the first {r['warmup_ends_s']:.0f} s (until 20 % of the deliveries); RSS sampled every "
            "second (psutil), medians of 10 samples at each end; engine exit code after SIGTERM: "
            f"{r['exit_code']}.",
        ]
    )


def chart(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.plot(
        [t for t, _ in r["samples"]],
        [m for _, m in r["samples"]],
        color="#d62728",
        label="engine RSS (MiB)",
    )
    ax.axvline(r["warmup_ends_s"], ls="--", color="gray", lw=0.8, label="end of warm-up")
    ax.set_xlabel("seconds")
    ax.set_ylabel("RSS MiB")
    ax.set_ylim(0, max(m for _, m in r["samples"]) * 1.25)
    ax2 = ax.twinx()
    ax2.plot(
        [t for t, _ in r["progress"]],
        [u / 1000 for _, u in r["progress"]],
        color="#1f77b4",
        label="delivered (thousands)",
    )
    ax2.set_ylabel("delivered (thousands)")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [x.get_label() for x in lines], loc="lower right")
    ax.set_title(
        f"soak: {r['n']:,} deliveries, one engine process — growth after warm-up "
        f"{r['growth_pct']:+.1f} %"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=200_000)
    p.add_argument("-c", "--concurrency", type=int, default=64)
    p.add_argument(
        "--warmup", type=float, default=0.2, help="fraction of the deliveries counted as warm-up"
    )
    p.add_argument("--out", type=Path, default=common.ROOT / "docs" / "benchmarks")
    p.add_argument("--no-readme", action="store_true", help="do not update the table in docs/benchmarks/README.md")
    a = p.parse_args()
    r = run(a.n, a.concurrency, a.warmup)
    a.out.mkdir(parents=True, exist_ok=True)
    chart(r, a.out / "soak.png")
    md = markdown(r)
    (a.out / "soak.md").write_text(md + "\n")
    if not a.no_readme:
        from bench import report

        report.update_readme(
            common.ROOT / "docs" / "benchmarks" / "README.md",
            "soak",
            "\n".join(md.splitlines()[2:]),
        )
    (a.out / "soak.json").write_text(
        json.dumps({k: v for k, v in r.items() if k not in ("samples", "progress")}, indent=2)
        + "\n"
    )
    print(md)


if __name__ == "__main__":
    main()
