"""``diagnose health``: the engine's ``/health/ready`` and ``/health/detailed``.

The engine's base URL is ``--url``, else ``MS07_HEALTH_URL``, else
``http://127.0.0.1:<service.http_port>``; the bearer token is ``MS07_API_TOKEN``.
"""

from __future__ import annotations

from typing import Any

import httpx

from ms07.diagnose.context import Context
from ms07.diagnose.model import CheckResult, fmt_bytes, fmt_duration, listing
from ms07.logs import clip

TIMEOUT = 10.0  # the engine's own checks take up to 2 s each when a dependency hangs

# What to run next when one of the readiness checks is not healthy.
NEXT = {
    "database": ("PostgreSQL is unreachable or slow from the engine", "ms07 recover db-connection --dry-run"),
    "redis": ("Redis is unreachable from the engine", "ms07 diagnose queue"),
    "queue": ("the queue has a missing group, overdue retries or long-idle pending entries", "ms07 diagnose queue"),
    "workers": ("no live worker, or stale workers", "ms07 diagnose queue"),
    "destinations": ("a circuit is open or a destination is unhealthy", "ms07 diagnose timeouts"),
}


async def _get(client: httpx.AsyncClient, url: str, token: str | None) -> httpx.Response:
    return await client.get(url, headers={"Authorization": f"Bearer {token}"} if token else {})


async def check(ctx: Context) -> CheckResult:
    """Run the health check; see the module docstring."""
    r = CheckResult("health")
    base = ctx.options.engine_url(ctx.settings)
    token = ctx.settings.api_token()
    async with httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False) as client:
        try:
            ready = await _get(client, f"{base}/health/ready", token)
        except httpx.HTTPError as exc:
            what = "timed out" if isinstance(exc, httpx.TimeoutException) else (str(exc) or type(exc).__name__)
            r.add("unreachable", "critical", f"the engine does not answer at {base}",
                  f"GET {base}/health/ready: {what[:200]}",
                  "the engine is down or elsewhere: its pods, its systemd unit (systemctl status ms07) "
                  "or its `ms07 run` process; or give its address with --url / MS07_HEALTH_URL",
                  "ms07 recover worker-crash --dry-run")
            return r
        if ready.status_code in (401, 403):
            r.add("unauthorized", "warning", f"the engine refused our token ({ready.status_code})",
                  f"GET {base}/health/ready; MS07_API_TOKEN is {'set' if token else 'not set'}",
                  "set MS07_API_TOKEN to the engine's token", "ms07 diagnose health", unknown=True)
            return r
        body = _json(ready)
        if body is None or "status" not in body:
            r.add("bad_answer", "critical", f"{base}/health/ready did not answer with the health report",
                  f"HTTP {ready.status_code}: {clip(ready.text, 200)}", "is --url the engine's address?",
                  "ms07 diagnose health")
            return r
        _ready(r, base, body)
        try:
            detailed = await _get(client, f"{base}/health/detailed", token)
            data = _json(detailed)
        except httpx.HTTPError as exc:
            data = None
            r.add("detailed_failed", "warning", "/health/detailed did not answer", clip(str(exc), 200),
                  "the engine may be overloaded", "ms07 diagnose health", unknown=True)
        if data is not None and "status" in data:
            _detailed(r, data)
    return r


def _json(resp: httpx.Response) -> dict[str, Any] | None:
    try:
        data = resp.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _ready(r: CheckResult, base: str, body: dict[str, Any]) -> None:
    checks: dict[str, str] = body.get("checks") or {}
    r.details["ready"] = body
    table = r.section(f"{base}/health/ready", ["check", "status"])
    for name, state in checks.items():
        table.rows.append([name, state])
    bad = {k: v for k, v in checks.items() if v != "healthy"}
    evidence = ", ".join(f"{k} {v}" for k, v in checks.items()) + f"; version {body.get('version')}"
    status = body.get("status")
    if status == "healthy" and not bad:
        r.add("ready", "info", f"engine ready (version {body.get('version')})", evidence)
        return
    worst_check = next((k for k, v in bad.items() if v == "unhealthy"), next(iter(bad), "database"))
    why, command = NEXT.get(worst_check, ("", "ms07 diagnose all"))
    severity = "critical" if status == "unhealthy" else "warning"
    drain = " (draining)" if body.get("draining") else ""
    r.add("ready", severity, f"engine {status}{drain}: {listing([f'{k} {v}' for k, v in bad.items()]) or status}",
          evidence, f"{worst_check}: {why}" if why else "see the detailed report", command)


def _detailed(r: CheckResult, data: dict[str, Any]) -> None:
    r.details["detailed"] = data
    dests = data.get("destinations") or []
    table = r.section("destinations (engine view)",
                      ["destination", "health", "circuit", "pool in use / limit", "p95 ms", "auth"])
    for d in dests:
        pool = d.get("pool") or {}
        table.rows.append([str(d.get("name")), str(d.get("health")), str(d.get("circuit_state")),
                           f"{pool.get('in_use', '-')} / {pool.get('limit', '-')}",
                           "-" if d.get("p95_ms") is None else f"{d['p95_ms']:.1f}", str(d.get("auth"))])
    workers = data.get("workers") or []
    wt = r.section("workers (engine view)", ["worker", "live", "stale", "in flight", "RSS"])
    for w in workers:
        wt.rows.append([str(w.get("worker_id")), str(w.get("live")), str(w.get("stale")), str(w.get("in_flight")),
                        fmt_bytes(w.get("rss_bytes"))])
    proc = data.get("process") or {}
    db = (data.get("database") or {}).get("pool") or {}
    evidence = (f"worker {data.get('worker_id')}, up {fmt_duration(data.get('uptime_seconds'))}, RSS "
                f"{fmt_bytes(proc.get('rss_bytes'))}, in flight {proc.get('in_flight')}/{proc.get('concurrency')}, "
                f"DB pool {db.get('size')}/{db.get('max')} (waiting {db.get('waiting')}), DLQ {data.get('dlq_size')}")
    r.add("detailed", "info", f"{len(dests)} destination(s), {len(workers)} worker(s) known to the engine", evidence)
    if db.get("waiting"):
        r.add("db_pool_waiting", "warning", f"{db['waiting']} request(s) wait for a database connection",
              evidence, "the engine's PostgreSQL pool is exhausted: check slow queries or raise the pool",
              "ms07 recover db-connection --dry-run")
