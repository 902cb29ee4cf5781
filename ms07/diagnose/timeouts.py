"""``diagnose timeouts`` (guide, problem 1): distributions stuck in ``processing``.

Stuck jobs; destinations the engine marks unhealthy or has not checked lately; a live
DNS / TCP / HTTP probe of every destination at once (docs/architecture.md, problem 1: the guide's ``nslookup``,
``telnet`` and ``curl -v`` in one table); timeout attempts in the window; the effective
timeout, backoff and circuit-breaker settings with each circuit's state; queue depth.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any
from urllib.parse import urlsplit

from ms07 import keys
from ms07.diagnose.common import rows
from ms07.diagnose.context import Context, part
from ms07.diagnose.model import CheckResult, fmt_duration, listing
from ms07.logs import clip
from ms07.probe import FullProbe, probe_full
from ms07.store import diagnose_sql as sql


def destinations(ctx: Context, db_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Enabled destinations: the config's, then any other the database still lists."""
    by_name = {r["name"]: r for r in db_rows}
    out = []
    for d in ctx.settings.effective.values():
        if d.enabled:
            out.append({"name": d.name, "url": d.url, "health_url": d.health_url, "config": d,
                        "row": by_name.get(d.name)})
    configured = {d.name for d in ctx.settings.destinations}
    for r in db_rows:
        if r["name"] not in configured and r["enabled"]:
            out.append({"name": r["name"], "url": r["url"], "health_url": r["health_url"], "config": None,
                        "row": r})
    return out


async def _connect_only(url: str, stage_timeout: float) -> FullProbe:
    """DNS and TCP of a delivery URL (no GET: a delivery endpoint is not ours to poke)."""
    parts = urlsplit(url)
    out = FullProbe(url, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(stage_timeout):
            infos = await asyncio.get_running_loop().getaddrinfo(out.host, out.port, type=socket.SOCK_STREAM)
        out.addresses = sorted({str(i[4][0]) for i in infos})
    except Exception as exc:
        out.dns_error = "timed out" if isinstance(exc, TimeoutError) else clip(str(exc), 200)
        return out
    finally:
        out.dns_ms = round((time.perf_counter() - t0) * 1000, 2)
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(stage_timeout):
            _, writer = await asyncio.open_connection(out.addresses[0], out.port)
        writer.close()
    except Exception as exc:
        out.tcp_error = "timed out" if isinstance(exc, TimeoutError) else clip(str(exc) or type(exc).__name__, 200)
    out.tcp_ms = round((time.perf_counter() - t0) * 1000, 2)
    return out


async def probe_all(targets: list[dict[str, Any]], stage_timeout: float) -> list[FullProbe]:
    """Every destination at once: its health URL in full, else DNS+TCP of its URL."""
    return list(await asyncio.gather(*(
        probe_full(t["health_url"], timeout=stage_timeout) if t["health_url"]
        else _connect_only(t["url"], stage_timeout)
        for t in targets
    )))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}ms"


def _names(entries: list[str]) -> str:
    """The destinations of ``name: detail`` entries, so the headline says which."""
    return listing([e.partition(":")[0] for e in entries], 5)


def _probe_findings(r: CheckResult, targets: list[dict[str, Any]], probes: list[FullProbe], timeout: float) -> None:
    table = r.section("live probes (DNS, TCP, HTTP)",
                      ["destination", "url", "addresses", "dns", "tcp", "http", "verdict"])
    unreachable: list[str] = []
    hung: list[str] = []
    http_bad: list[str] = []
    http_5xx: list[str] = []
    causes: dict[str, str] = {}
    for t, p in zip(targets, probes, strict=True):
        name = t["name"]
        http_checked = bool(t["health_url"])
        if p.dns_error:
            verdict = f"DNS failed: {p.dns_error}"
            unreachable.append(f"{name}: DNS {p.host} failed ({p.dns_error})")
            causes["dns"] = "DNS does not resolve: fix the host name or the cluster DNS"
        elif p.tcp_error:
            verdict = f"TCP failed: {p.tcp_error}"
            unreachable.append(f"{name}: TCP {p.host}:{p.port} {p.tcp_error} after {_ms(p.tcp_ms)}")
            causes["tcp-timeout" if p.tcp_error == "timed out" else "tcp"] = (
                "TCP connect times out: a firewall or network policy drops the traffic"
                if p.tcp_error == "timed out" else "TCP refused: the service is down or listens on another port")
        elif not http_checked:
            verdict = "reachable (no health_url: HTTP not probed)"
        elif p.http_error == "timed out":
            verdict = f"HTTP no answer within {timeout:g}s"
            hung.append(f"{name}: GET {p.url} connected in {_ms(p.tcp_ms)} but no answer within {timeout:g}s")
        elif not p.healthy:
            verdict = f"HTTP {p.http_status or p.http_error}"
            entry = f"{name}: GET {p.url} -> {p.http_status or p.http_error}"
            (http_5xx if (p.http_status or 0) >= 500 or p.http_status is None else http_bad).append(entry)
        else:
            verdict = f"OK (HTTP {p.http_status})"
        table.rows.append([name, p.url, ", ".join(p.addresses) or "-", _ms(p.dns_ms), _ms(p.tcp_ms),
                           _ms(p.http_ms) if http_checked else "-", verdict])
    r.details["probes"] = [p.as_dict() for p in probes]
    if unreachable:
        r.add("probe_unreachable", "critical",
              f"{len(unreachable)} destination(s) cannot be reached: {_names(unreachable)}",
              "; ".join(unreachable), "; ".join(causes[k] for k in sorted(causes)), "ms07 destinations check")
    if hung:
        r.add("probe_timeout", "critical",
              f"{len(hung)} destination(s) accept connections but do not answer: {_names(hung)}",
              "; ".join(hung),
              "the service is hung or overloaded: deliveries to it end in READ_TIMEOUT and pile up in "
              "processing; restart or scale the destination, then re-check",
              "ms07 destinations check")
    if http_5xx:
        r.add("probe_http_error", "critical",
              f"{len(http_5xx)} destination(s) answer their health check with an error: {_names(http_5xx)}",
              "; ".join(http_5xx), "the destination reports itself broken: escalate to its owners",
              "ms07 destinations check")
    if http_bad:
        r.add("probe_http_status", "warning", f"{len(http_bad)} health URL(s) answer with a non-2xx status",
              "; ".join(http_bad), "check health_url in the destination's config (wrong path or auth?)",
              "ms07 destinations check")
    if probes and not (unreachable or hung or http_5xx or http_bad):
        r.add("probes_ok", "info", f"all {len(probes)} destination(s) answered the live probe",
              f"probed concurrently, {timeout:g}s per stage")


async def check(ctx: Context) -> CheckResult:
    """Run the timeouts check; see the module docstring."""
    r = CheckResult("timeouts")
    o = ctx.options
    db_rows: list[dict[str, Any]] = []

    async def load_destinations() -> None:
        async with ctx.connection() as conn:
            db_rows.extend(await rows(conn, sql.DESTINATIONS))

    loaded = await part(r, "destination health", load_destinations)
    targets = destinations(ctx, db_rows)
    probing = asyncio.create_task(probe_all(targets, o.probe_timeout_seconds))

    async def stuck() -> None:
        async with ctx.connection() as conn:
            found = await rows(conn, sql.STUCK_JOBS, {"stuck": o.stuck_after_seconds})
            by_dest = await rows(conn, sql.STUCK_BY_DESTINATION, {"stuck": o.stuck_after_seconds}) if found else []
        r.details["stuck_jobs"] = found
        if not found:
            r.add("stuck_jobs", "info", f"no job in processing for more than {fmt_duration(o.stuck_after_seconds)}")
            return
        total = int(found[0]["total"])
        oldest = [f"{j['distribution_id']} ({j['destination_name']}, {fmt_duration(j['seconds_old'])} old, "
                  f"processing {fmt_duration(j['seconds_processing'])})" for j in found]
        per = ", ".join(f"{d['destination_name']}={d['count']}" for d in by_dest)
        r.add("stuck_jobs", "critical",
              f"{total} job(s) in processing for more than {fmt_duration(o.stuck_after_seconds)}",
              f"oldest: {listing(oldest, 5)}; by destination: {per}",
              "their worker died or hangs while holding them: take over its pending entries; jobs "
              "whose entry vanished are re-enqueued by requeue-from-db",
              "ms07 recover reclaim-pending")

    async def timeout_attempts() -> None:
        async with ctx.connection() as conn:
            found = await rows(conn, sql.TIMEOUT_ATTEMPTS, {"since": o.since_seconds})
        r.details["timeout_attempts"] = found
        if not found:
            r.add("timeout_attempts", "info",
                  f"no CONNECTION_TIMEOUT or READ_TIMEOUT attempt in the last {o.since_text}")
            return
        table = r.section(f"timeout attempts, last {o.since_text}", ["destination", "error code", "attempts", "last"])
        for f in found:
            table.rows.append([f["destination_name"], f["error_code"], str(f["n"]), str(f["last_at"])[:19]])
        connect = sum(f["n"] for f in found if f["error_code"] == "CONNECTION_TIMEOUT")
        read = sum(f["n"] for f in found if f["error_code"] == "READ_TIMEOUT")
        worst_dest = found[0]["destination_name"]
        if read >= connect:
            remedy = (f"READ_TIMEOUT dominates: {worst_dest} connects but answers too slowly; raise "
                      f"destinations.{worst_dest}.timeout_seconds above its p95 or fix the destination")
            command = f"ms07 diagnose latency --since {o.since_text}"
        else:
            remedy = ("CONNECTION_TIMEOUT dominates: the destination's host or network drops connections; "
                      "check connectivity")
            command = "ms07 destinations check"
        evidence = ", ".join(f"{f['destination_name']} {f['error_code']}={f['n']}" for f in found)
        r.add("timeout_attempts", "warning", f"{connect + read} timed-out attempt(s) in the last {o.since_text}",
              evidence, remedy, command)

    await part(r, "stuck jobs", stuck)
    await part(r, "timeout attempts", timeout_attempts)
    await part(r, "live circuit state", lambda: _circuits(ctx, r, targets))
    await part(r, "queue depth", lambda: _depth(ctx, r))
    probes = await probing
    if loaded:
        _health_findings(ctx, r, targets)
    _probe_findings(r, targets, probes, o.probe_timeout_seconds)
    if not targets:
        r.add("no_destinations", "info", "no destination is configured", "",
              "add destinations to the config file (MS07_CONFIG)")
    return r


def _health_findings(ctx: Context, r: CheckResult, targets: list[dict[str, Any]]) -> None:
    stale_after = ctx.options.stale_health_seconds
    unhealthy, stale = [], []
    for t in targets:
        row = t["row"] or {}
        if row.get("health_status") == "unhealthy":
            age = fmt_duration(row.get("seconds_since_check"))
            unhealthy.append(f"{t['name']}: {row.get('last_health_error') or 'unhealthy'} (checked {age} ago)")
        if t["health_url"]:
            since = row.get("seconds_since_check")
            if since is None:
                stale.append(f"{t['name']}: never checked")
            elif float(since) > stale_after:
                stale.append(f"{t['name']}: last checked {fmt_duration(since)} ago")
    if unhealthy:
        r.add("destination_unhealthy", "warning", f"{len(unhealthy)} destination(s) marked unhealthy by the engine",
              "; ".join(unhealthy), "see the live probe below for what fails now", "ms07 destinations check")
    if stale:
        r.add("health_check_stale", "warning",
              f"{len(stale)} destination health check(s) older than {fmt_duration(stale_after)}",
              "; ".join(stale),
              "the engine probes every service.health_check_interval_seconds: stale checks mean no "
              "engine runs its health loop", "ms07 diagnose health")


async def _circuits(ctx: Context, r: CheckResult, targets: list[dict[str, Any]]) -> None:
    live: dict[str, dict[str, str]] = {}
    redis_error = None
    try:
        queue = await ctx.queue()
        pipe = queue.redis.pipeline(transaction=False)
        for t in targets:
            pipe.hgetall(keys.circuit(t["name"]))
        live = {t["name"]: h for t, h in zip(targets, await pipe.execute(), strict=True) if h}
    except Exception as exc:  # the database's copy of the state is still worth showing
        redis_error = exc
    table = r.section("effective settings and circuit state",
                      ["destination", "timeout", "connect", "backoff", "attempts", "breaker", "circuit", "since"])
    opened, half = [], []
    for t in targets:
        cfg = t["config"]
        row = t["row"] or {}
        state = live.get(t["name"], {}).get("state") or row.get("circuit_state") or "closed"
        changed = live.get(t["name"], {}).get("changed_at")
        since = fmt_duration(time.time() - float(changed)) + " ago" if changed else (
            str(row.get("circuit_changed_at"))[:19] if row.get("circuit_changed_at") else "-")
        if cfg is not None:
            table.rows.append([t["name"], f"{cfg.timeout_seconds:g}s", f"{cfg.connect_timeout_seconds:g}s",
                               f"{cfg.retry_base_delay_seconds:g}s x{cfg.retry_backoff_multiplier:g}^n "
                               f"<= {cfg.max_retry_delay:g}s", str(cfg.max_attempts),
                               f"{cfg.circuit_breaker.failure_threshold} failures / "
                               f"{cfg.circuit_breaker.recovery_timeout:g}s", state, since])
        else:
            table.rows.append([t["name"], "-", "-", "-", "-", "-", state, since])
        if state == "open":
            opened.append(f"{t['name']}: open since {since}")
        elif state == "half_open":
            half.append(t["name"])
    d = ctx.settings.distribution
    cb = ctx.settings.circuit_breaker
    summary = (f"timeout {d.timeout_seconds:g}s, backoff {d.retry_base_delay_seconds:g}s x"
               f"{d.retry_backoff_multiplier:g}^n <= {d.max_retry_delay:g}s, {d.max_attempts} attempts, "
               f"circuit {cb.failure_threshold} failures / {cb.recovery_timeout:g}s")
    r.add("settings", "info", f"effective defaults: {summary}",
          f"claim_idle_seconds {d.claim_idle_seconds:g}s; per-destination overrides in the table")
    if opened:
        r.add("circuit_open", "critical",
              f"circuit open for {len(opened)} destination(s): {_names(opened)}: deliveries are deferred",
              "; ".join(opened),
              "the destination failed failure_threshold times in a row; it is probed again after "
              "recovery_timeout. Fix the destination (see the live probe)", "ms07 destinations check")
    if half:
        r.add("circuit_half_open", "warning", f"circuit half-open (probing) for {listing(half)}", "",
              "a probe delivery decides whether it closes again",
              f"ms07 diagnose timeouts --since {ctx.options.since_text}")
    if redis_error is not None:
        raise redis_error


async def _depth(ctx: Context, r: CheckResult) -> None:
    queue = await ctx.queue()
    stats = await queue.stats()
    r.details["queue"] = stats
    depth = stats["total_length"]
    per_queue = ", ".join(f"{q}={v['length']}" for q, v in stats["queues"].items())
    evidence = (f"stream entries {depth} ({per_queue}), "
                f"pending {stats['total_pending']}, delayed retries {stats['total_delayed']}, DLQ {stats['dlq']}")
    if depth > ctx.options.queue_depth_warning:
        r.add("queue_depth", "warning", f"queue depth {depth} is above {ctx.options.queue_depth_warning}", evidence,
              "deliveries are slower than submissions: see whether workers are alive and destinations slow",
              "ms07 diagnose queue")
    else:
        r.add("queue_depth", "info", f"queue depth {depth}", evidence)
