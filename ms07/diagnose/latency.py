"""``diagnose latency`` (guide, problem 2): slow deliveries.

Per destination over the window: attempts, avg, p50/p95/p99 (``percentile_cont``), max
and failures; p95 above the threshold flagged; active distributions and their average
queue time; the pool limits in force; a bar chart of p95. The remedy is picked from what
the data shows: a saturated pool, saturated workers, a busy destination without
batching, or a destination that is simply slow.
"""

from __future__ import annotations

from typing import Any

from ms07.diagnose.common import num, rows
from ms07.diagnose.context import Context, part
from ms07.diagnose.model import CheckResult, fmt_duration
from ms07.resolved import ResolvedDestination
from ms07.store import diagnose_sql as sql

BATCHING_RATE = 20.0  # attempts per second above which batching pays off
SATURATION = 0.8


def _remedy(
    ctx: Context, name: str, cfg: ResolvedDestination | None, row: dict[str, Any], active: dict[str, int],
    live_workers: int,
) -> tuple[str, str]:
    """(remedy, command) for a destination whose p95 is too high, from what the data shows."""
    o = ctx.options
    verify = f"ms07 diagnose latency --since {o.since_text}"
    total_active = sum(active.values())
    capacity = ctx.settings.service.concurrency * max(1, live_workers)
    rate = row["attempts"] / o.since_seconds
    if cfg is not None and active.get(name, 0) >= SATURATION * cfg.pool.max_connections:
        return (f"the connection pool is saturated ({active.get(name, 0)} in flight, max_connections "
                f"{cfg.pool.max_connections}): raise destinations.{name}.pool.max_connections (and "
                f"max_keepalive_connections) if the destination can take more", verify)
    if total_active >= SATURATION * capacity:
        replicas = max(2, live_workers * 2)
        return (f"the workers are saturated ({total_active} in flight of {capacity}): scale workers "
                f"horizontally", f"ms07 recover scale --replicas {replicas} --dry-run")
    if cfg is not None and cfg.batch is None and rate >= BATCHING_RATE:
        return (f"{rate:.0f} attempts/s to {name} one by one: if it accepts arrays, enable batching "
                f"(destinations.{name}.batch: {{max_items: 100, max_wait_ms: 50}})", verify)
    return (f"{name} itself is slow with little in flight: it needs attention from its owners; check it "
            f"answers promptly", "ms07 diagnose timeouts")


def _chart(r: CheckResult, stats: list[dict[str, Any]], threshold: float) -> None:
    bars = [(s["destination_name"], float(s["p95_ms"] or 0.0), (s["p95_ms"] or 0) > threshold) for s in stats]
    if bars:
        r.section(f"p95 latency by destination (threshold {threshold:g} ms)", [], chart=bars, unit="ms")


async def check(ctx: Context) -> CheckResult:
    """Run the latency check; see the module docstring."""
    r = CheckResult("latency")
    o = ctx.options
    stats: list[dict[str, Any]] = []
    active: dict[str, int] = {}
    live_workers = 0

    async def load() -> None:
        nonlocal live_workers
        async with ctx.connection() as conn:
            found = await rows(conn, sql.LATENCY, {"since": o.since_seconds})
            act = await rows(conn, sql.ACTIVE)
            workers = await rows(conn, sql.WORKERS)
        for f in found:
            pct = f.pop("pct") or [None, None, None]
            f["p50_ms"], f["p95_ms"], f["p99_ms"] = pct
            stats.append(f)
        stats.sort(key=lambda f: -(f["p95_ms"] or 0.0))
        active.update({a["destination_name"]: int(a["active"]) for a in act})
        live_workers = sum(1 for w in workers if w["status"] != "stopped"
                           and float(w["seconds_since_update"]) <= o.stale_worker_seconds)
        total = sum(int(a["active"]) for a in act)
        avg_q = (sum(float(a["avg_queue_seconds"]) * int(a["active"]) for a in act) / total) if total else None
        r.details.update({"destinations": stats, "active": active, "active_total": total,
                          "avg_queue_seconds": avg_q, "live_workers": live_workers})
        r.add("active", "info", f"{total} active distribution(s), average queue time {fmt_duration(avg_q)}",
              f"in processing by destination: {', '.join(f'{k}={v}' for k, v in sorted(active.items())) or 'none'}; "
              f"{live_workers} live worker(s) x concurrency {ctx.settings.service.concurrency}")

    if not await part(r, "latency per destination", load):
        return r
    configs = ctx.settings.effective
    table = r.section(f"latency, last {o.since_text}",
                      ["destination", "attempts", "avg ms", "p50 ms", "p95 ms", "p99 ms", "max ms", "failed"])
    slow, failing = [], []
    for s in stats:
        name = s["destination_name"]
        table.rows.append([name, str(s["attempts"]), num(s["avg_ms"]), num(s["p50_ms"]), num(s["p95_ms"]),
                           num(s["p99_ms"]), num(s["max_ms"]), str(s["failures"])])
        if s["p95_ms"] is not None and s["p95_ms"] > o.p95_threshold_ms:
            slow.append(s)
        if s["attempts"] >= 10 and 100.0 * s["failures"] / s["attempts"] > o.failure_rate_warning_percent:
            failing.append(s)
    _chart(r, stats, o.p95_threshold_ms)
    pools = r.section("pool limits in force",
                      ["destination", "max_connections", "keepalive", "keepalive_expiry", "in flight", "batch",
                       "rate limit", "timeout"])
    for d in ctx.settings.effective.values():
        pools.rows.append([d.name, str(d.pool.max_connections), str(d.pool.max_keepalive_connections),
                           f"{d.pool.keepalive_expiry:g}s", str(active.get(d.name, 0)),
                           f"{d.batch.max_items} / {d.batch.max_wait_ms}ms" if d.batch else "-",
                           f"{d.rate_limit.per_second:g}/s" if d.rate_limit else "-", f"{d.timeout_seconds:g}s"])
    if not stats:
        r.add("p95", "info", f"no delivery attempt in the last {o.since_text}")
    for s in slow:
        name = s["destination_name"]
        cfg = configs.get(name)
        remedy, command = _remedy(ctx, name, cfg, s, active, live_workers)
        timeout_ms = cfg.timeout_seconds * 1000 if cfg else 0.0
        near_timeout = bool(timeout_ms) and s["p95_ms"] >= 0.8 * timeout_ms
        r.add("p95_high", "critical" if near_timeout else "warning",
              f"{name}: p95 {s['p95_ms']:.0f} ms > {o.p95_threshold_ms:g} ms"
              + (f" (close to its {timeout_ms / 1000:g}s timeout)" if near_timeout else ""),
              f"{s['attempts']} attempts, avg {num(s['avg_ms'])} ms, p99 {num(s['p99_ms'])} ms, "
              f"max {num(s['max_ms'])} ms, {s['failures']} failed, {active.get(name, 0)} in flight",
              remedy, command, subject=name)
    if stats and not slow:
        top = max(stats, key=lambda s: s["p95_ms"] or 0)
        r.add("p95", "info", f"p95 within {o.p95_threshold_ms:g} ms for every destination",
              f"highest: {top['destination_name']} p95 {num(top['p95_ms'])} ms")
    for s in failing:
        rate = 100.0 * s["failures"] / s["attempts"]
        r.add("failure_rate", "warning",
              f"{s['destination_name']}: {rate:.0f}% of attempts failed in the last {o.since_text}",
              f"{s['failures']} of {s['attempts']} attempts",
              "see which errors, with their HTTP status and latest message, and what to do for each",
              f"ms07 diagnose errors --since {o.since_text}",
              subject=s["destination_name"])
    return r
