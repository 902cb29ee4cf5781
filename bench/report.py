"""Markdown tables, PNG charts (matplotlib, Agg) and the README section of the benchmarks."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

LABELS = {
    "aiohttp": "bare aiohttp loop (ceiling)",
    "httpx": "bare httpx, default transport",
    "httpx-aiohttp": "httpx on the httpx-aiohttp transport",
    "ms07": "**ms07** (`ms07 run`, 1 process, every attempt in PostgreSQL)",
    "ms07-w2": "**ms07** (`ms07 run --workers 2`)",
    "celery": "Celery (threads pool, requests)",
    "arq": "arq (aiohttp)",
    "taskiq": "taskiq (RedisStreamBroker, aiohttp)",
}
SHORT = {
    "aiohttp": "aiohttp\n(ceiling)",
    "httpx": "httpx",
    "httpx-aiohttp": "httpx +\naiohttp transport",
    "ms07": "ms07",
    "ms07-w2": "ms07\n--workers 2",
    "celery": "Celery",
    "arq": "arq",
    "taskiq": "taskiq",
}
CLIENTS = ("aiohttp", "httpx", "httpx-aiohttp")


def _f(v: Any, fmt: str = ",.0f", none: str = "–") -> str:
    return none if v is None else format(v, fmt)


def spread(xs: list[float]) -> str:
    """``median (min–max)`` of per-round values."""
    import statistics

    if not xs:
        return "–"
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}–{max(xs):.2f})"


def round_ratios(s: dict[str, Any], a: str, b: str, key: str = "runs") -> list[float]:
    """``a``'s value over ``b``'s, round by round (``key``: ``runs`` rates, ``cpu_runs`` CPU):
    a round runs every system within minutes, so its ratio compares them under one load."""
    return [x / y for x, y in zip(s[a].get(key, []), s[b].get(key, []), strict=False) if y]


def compare_table(r: dict[str, Any], readme: bool = False) -> str:
    s = r["systems"]
    head = (
        "| system | deliveries/s | × ceiling | worker CPU s / 1k | CPU × ceiling's "
        "| p50 / p95 / p99 ms (at half its peak) | producer CPU s / 1k | peak RSS MiB | sink unique / duplicates |"
    )
    rows = [head, "|---|---:|---:|---:|---:|---|---:|---:|---|"]
    for name, x in s.items():
        lat = x.get("latency")
        latency = (
            (
                f"{_f(lat['p50_ms'], '.1f')} / {_f(lat['p95_ms'], '.1f')} / {_f(lat['p99_ms'], '.1f')} "
                f"(at {_f(lat['achieved_rate'])}/s)"
            )
            if lat
            else "–"
        )
        lost = x["unique"] < x["n"]
        integrity = (
            f"{x['unique']:,} / {x['duplicates']:,}"
            + (" **LOST**" if lost else "")
            + (" **DUPLICATED**" if x["duplicates"] else "")
        )
        rates = x.get("runs", [x["rate"]])
        rows.append(
            f"| {LABELS.get(name, name)} | {x['rate']:,.0f} ({min(rates):,.0f}–{max(rates):,.0f}) "
            f"| {spread(round_ratios(s, name, 'aiohttp'))} "
            f"| {x['cpu_per_1000']:.2f} | {spread(round_ratios(s, name, 'aiohttp', 'cpu_runs'))} | {latency} "
            f"| {_f(x.get('producer_cpu_per_1000'), '.2f')} "
            f"| {_f(x.get('peak_rss_mb'), '.0f')} | {integrity} |"
        )
    m = r["machine"]
    caption = (
        f"N = {r['n']:,} deliveries of 1 KiB JSON per system and round ({r['ref_n']:,} for the httpx "
        f"references), concurrency {r['concurrency']}, {r['runs']} rounds: rates are the median (min–max) "
        "of the rounds, ratios the median (min–max) of the per-round ratios; "
        f"{m['cpus']} CPUs, Python {m['python']}, {m['date']}, load average "
        f"{m['load_before'][0]:.1f} before / {m['load_after'][0]:.1f} after (shared machine)."
    )
    if readme:
        caption += " Method, settings and targets: [docs/benchmarks/compare.md](docs/benchmarks/compare.md)."
    out = caption + "\n\n" + "\n".join(rows)
    rates = rates_table(r)
    if rates:
        out += "\n\n" + rates
    if workers_line(r):
        out += "\n\n" + workers_line(r)
    if readme:
        out += "\n\n![compare](docs/benchmarks/compare.png)"
    return out


def rates_table(r: dict[str, Any]) -> str:
    """Enqueue -> delivered p50 / p95 / p99 ms of every system at the same offered rates."""
    common = r.get("common_rates")
    if not common:
        return ""
    names = [n for n in r["systems"] if n not in CLIENTS]
    rows = [
        f"Latency at common offered rates (enqueue → delivered, p50 / p95 / p99 ms; median of "
        f"{r.get('rate_runs', 1)} paced runs of {r.get('rate_seconds', 0):g} s each; – : the rate is past "
        "80 % of that system's peak, not run):",
        "",
        "| offered | " + " | ".join(SHORT.get(n, n).replace("\n", " ") for n in names) + " |",
        "|---:|" + "---|" * len(names),
    ]
    for rate, by in common.items():
        cells = []
        for n in names:
            x = by.get(n, {})
            if "p99_ms" not in x:
                cells.append("–")
            else:
                cells.append(f"{_f(x.get('p50_ms'), '.1f')} / {_f(x.get('p95_ms'), '.1f')} / {_f(x['p99_ms'], '.1f')}")
        rows.append(f"| {float(rate):,.0f}/s | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _judged(ok: bool, rounds: int, min_rounds: int) -> bool | None:
    return ok if rounds >= min_rounds else None


def workers_line(r: dict[str, Any]) -> str:
    """``ms07 run --workers 2`` against 1, from the same rounds."""
    s = r["systems"]
    if "ms07-w2" not in s or "ms07" not in s:
        return ""
    rounds = round_ratios(s, "ms07-w2", "ms07")
    cpu = round_ratios(s, "ms07-w2", "ms07", "cpu_runs")
    return (f"`ms07 run --workers 2` against 1 process, same rounds: {spread(rounds)} × the deliveries/s, "
            f"{spread(cpu)} × the worker CPU per delivery (median, min–max of {len(rounds)} per-round ratios; "
            f"{r['machine']['cpus']} CPUs, shared with the sink, PostgreSQL, Redis and the producer).")


def targets(r: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """Each target with True (met) or False (missed) on the median of the per-round ratios,
    None when fewer than ``min_rounds`` rounds ran (too few to judge)."""
    import statistics

    s = r["systems"]
    if "ms07" not in s:
        return []
    min_rounds = r.get("min_rounds", 5)
    out: list[tuple[str, bool | None, str]] = []
    for other, k, what in (("aiohttp", 0.5, "ceiling"), ("celery", 5, "celery"), ("arq", 3, "arq")):
        if other not in s:
            continue
        rounds = round_ratios(s, "ms07", other)
        med = statistics.median(rounds)
        out.append(
            (
                f"ms07 >= {k:g} × {what} (deliveries/s)",
                _judged(med >= k, len(rounds), min_rounds),
                f"{med:.2f} × (median of {len(rounds)} per-round ratios; min–max "
                f"{min(rounds):.2f}–{max(rounds):.2f}: {', '.join(f'{x:.2f}' for x in rounds)})",
            )
        )
    if "aiohttp" in s and s["ms07"].get("cpu_runs"):
        rounds = round_ratios(s, "ms07", "aiohttp", "cpu_runs")
        med = statistics.median(rounds)
        out.append(
            (
                "ms07's worker CPU per delivery <= 1.5 × the bare aiohttp client's",
                _judged(med <= 1.5, len(rounds), min_rounds),
                f"{med:.2f} × (median of {len(rounds)} per-round ratios; min–max {min(rounds):.2f}–{max(rounds):.2f}; "
                f"ms07 {s['ms07']['cpu_per_1000']:.3f} s / 1k, aiohttp {s['aiohttp']['cpu_per_1000']:.3f})",
            )
        )
    queues = [q for q in ("ms07", "celery", "arq", "taskiq") if q in s]
    lowest = min(queues, key=lambda q: s[q]["cpu_per_1000"])
    out.append(
        (
            "ms07's worker CPU per 1,000 the lowest of the queues",
            lowest == "ms07",
            ", ".join(f"{q} {s[q]['cpu_per_1000']:.2f}" for q in queues),
        )
    )
    ms = s["ms07"]
    lat = ms.get("latency")
    if lat:
        runs = lat.get("p99_runs", [lat["p99_ms"]])
        out.append(
            (
                "ms07 p99 enqueue -> delivered at half its peak rate <= 50 ms",
                lat["p99_ms"] is not None and lat["p99_ms"] <= 50,
                f"{_f(lat['p99_ms'], '.1f')} ms (median of {len(runs)} runs: "
                f"{', '.join(_f(x, '.1f') for x in runs)} ms) at {lat['achieved_rate']:,.0f}/s "
                f"(offered {lat['offered_rate']:,.0f}/s)"
                + (f"; {_f(lat['p99_all_ms'], '.1f')} ms with the producer's first "
                   f"{lat.get('warmup_seconds', 0):g} s counted" if lat.get("p99_all_ms") is not None else ""),
            )
        )
    at500 = r.get("common_rates", {}).get("500", {})
    if "p99_ms" in at500.get("ms07", {}):
        mine = at500["ms07"]["p99_ms"]
        peers = {q: x["p99_ms"] for q, x in at500.items() if q in ("celery", "arq", "taskiq") and "p99_ms" in x}
        best = min(peers.values()) if peers else None
        out.append(
            (
                "ms07 p99 at 500/s offered <= 20 ms and no worse than the best peer's",
                mine <= 20 and (best is None or mine <= best),
                f"ms07 {mine:.1f} ms; " + ", ".join(f"{q} {v:.1f}" for q, v in peers.items()),
            )
        )
    return out


def compare_markdown(r: dict[str, Any]) -> str:
    out = [
        "# ms07 side by side with Celery, arq and taskiq",
        "",
        "Produced by `python -m bench.compare` (see its docstring for the method); what limits "
        "ms07 and what was changed: [profile.md](profile.md).",
        "",
        compare_table(r),
        "",
        "![compare](compare.png)",
        "",
        "## Targets (ratios from the same run)",
        "",
    ]
    mark = {True: "✅", False: "❌", None: f"⚠️ not judged (fewer than {r.get('min_rounds', 5)} rounds)"}
    out += [f"- {mark[ok]} {what}: {value}" for what, ok, value in targets(r)]
    if workers_line(r):
        out += ["", "## One engine process or two", "", workers_line(r)]
    out += [
        "",
        "## How each system was run (same concurrency C = "
        f"{r['concurrency']} deliveries in flight, one worker process each)",
        "",
    ]
    for name, text in r["settings"].items():
        v = ", ".join(f"{k} {val}" for k, val in r.get("versions", {}).get(name, {}).items())
        out.append(f"- **{name}** ({v}): {text}")
    out += [
        "",
        "## Method",
        "",
        "- One PostgreSQL, one Redis (loopback TCP, AOF everysec, noeviction) and one sink process "
        "(aiohttp on uvloop) serve every system; Redis (and ms07's tables) are emptied before each run.",
        "- Each run: the system's producer enqueues N jobs, then its worker starts and delivers them. "
        "deliveries/s = (N - 1) / (time of the sink's N-th unique Idempotency-Key - time of its first "
        "request): start-up is excluded for everyone. Rounds alternate the systems, so a burst of load "
        "from other tenants of the machine hits all of them; the median of the rounds is reported "
        "(rates per round: "
        + "; ".join(
            f"{k} " + "/".join(f"{x:,.0f}" for x in v["runs"]) for k, v in r["systems"].items()
        )
        + ").",
        "- Worker CPU: user+sys of the worker's whole process tree (psutil), read when the sink sees "
        "the first request and when it has N unique keys. Producer CPU: user+sys of the producer "
        "process (its interpreter start-up included), reported apart. Peak RSS: the worker tree, "
        "sampled every 0.2 s.",
        "- Latency: per queue and round (rounds alternate the systems, medians reported), a warm worker "
        "and a producer paced at half that queue's own median rate for a fixed time; every payload "
        "carries `time.time()` taken just before its enqueue call and the "
        "sink records arrival - enqueue (one clock, one method for all four; for ms07 the enqueue call "
        "returns once the job row is committed in PostgreSQL and the entry is in the stream). Each paced "
        "run starts a new producer process; what arrives in the first second after the first delivery "
        "(its warm-up: connections opened, first statements planned) is left out of the percentiles, "
        "for every system alike (`WARMUP_SECONDS` in bench/compare.py; compare.json keeps the "
        "percentiles with it as `*_all_ms`).",
        "- Latency at common rates: every queue paced at the same offered rates (`--rates`), each rate "
        "only where it is at most 80 % of that queue's median peak, rounds alternating the systems, "
        "medians reported; the same warm-up rule as above.",
        "- The bare clients run in the benchmark process on uvloop, like the engine: they are the "
        "ceiling, not a queue.",
        "- ms07's run is checked against PostgreSQL: "
        + (
            f"{r['systems']['ms07'].get('delivered_rows', 0):,} delivered job rows and "
            f"{r['systems']['ms07'].get('attempt_rows', 0):,} attempt rows for N = {r['n']:,}."
            if "ms07" in r["systems"]
            else "not run."
        ),
    ]
    return "\n".join(out)


def compare_chart(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = r["systems"]
    names = list(s)
    queues = [n for n in names if n not in CLIENTS]
    colors = [
        "#9e9e9e" if n in CLIENTS else ("#d62728" if n.startswith("ms07") else "#1f77b4") for n in names
    ]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    ax = axes[0][0]
    ax.bar([SHORT[n] for n in names], [s[n]["rate"] for n in names], color=colors)
    ax.axhline(s["aiohttp"]["rate"] / 2, ls="--", color="black", lw=0.8, label="0.5 × ceiling")
    ax.set_title(f"deliveries/s (median of {r['runs']}, higher is better)")
    ax.legend()
    ax = axes[0][1]
    ax.bar([SHORT[n] for n in names], [s[n]["cpu_per_1000"] for n in names], color=colors)
    ax.set_title("worker CPU seconds per 1,000 deliveries (lower is better)")
    ax = axes[1][0]
    with_lat = [q for q in queues if s[q].get("latency")]
    width = 0.27
    for i, (key, shade) in enumerate((("p50_ms", 0.35), ("p95_ms", 0.65), ("p99_ms", 1.0))):
        ax.bar(
            [x + (i - 1) * width for x in range(len(with_lat))],
            [s[q]["latency"][key] or 0 for q in with_lat],
            width,
            label=key[:3],
            alpha=shade,
            color="#444444",
        )
    ax.set_xticks(
        range(len(with_lat)),
        [f"{SHORT[q]}\n@{s[q]['latency']['achieved_rate']:,.0f}/s" for q in with_lat],
    )
    ax.axhline(50, ls="--", color="#d62728", lw=0.8, label="50 ms")
    ax.set_yscale("log")
    ax.set_title("enqueue → delivered ms at half each queue's peak (log)")
    ax.legend()
    ax = axes[1][1]
    ax.bar(
        [SHORT[q] for q in queues],
        [s[q]["peak_rss_mb"] for q in queues],
        color=["#d62728" if q.startswith("ms07") else "#1f77b4" for q in queues],
    )
    ax.set_title("worker peak RSS MiB (lower is better)")
    m = r["machine"]
    fig.suptitle(
        f"N = {r['n']:,} × 1 KiB, concurrency {r['concurrency']} — {m['cpus']} CPUs, "
        f"Python {m['python']}, {m['date']}, load {m['load_before'][0]:.1f}/{m['load_after'][0]:.1f}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def update_readme(readme: Path, name: str, text: str) -> None:
    """Replace what lies between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``."""
    content = readme.read_text()
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    if start not in content:
        return
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    readme.write_text(pattern.sub(lambda _: f"{start}\n{text}\n{end}", content))
