"""What the console's pages show, read from PostgreSQL and Redis.

The same functions serve the console inside ``ms07 run`` (the engine's pool and Redis
client) and ``ms07 console`` on its own (a :class:`~ms07.runtime.Runtime` of its own): the
pages never ask the engine's memory, so they show the same numbers with no engine up.
Everything an API also answers (queue stats, a distribution, the search, replays, the
DLQ) comes from the same library function the API calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import dict_row

from ms07 import keys, logs
from ms07.store import heartbeats
from ms07.store.status import AttemptStatus

if TYPE_CHECKING:
    from ms07.config import Settings
    from ms07.engine.engine import Engine
    from ms07.runtime import Runtime

PAYLOAD_CAP = 64 * 1024  # bytes of a payload a page shows; the rest is counted, not sent
WINDOW_MINUTES = 60
VERDICT_MAX_AGE = 60.0
VERDICT_WAIT = 8.0
FORGET_WORKERS_AFTER = 24 * 3600.0


@dataclass
class Source:
    """Where the pages read from: the engine's connections, or a runtime of their own."""

    settings: Settings
    runtime: Runtime
    engine: Engine | None = None
    verdict: Verdict = field(default_factory=lambda: Verdict())

    @contextlib.asynccontextmanager
    async def connection(self) -> Any:
        async with self.runtime.connection() as conn:
            yield conn


# ---------------------------------------------------------------------------- rates

# One pass over the window's attempts (started_at index): a row per minute, and the
# window's totals as the row whose minute is NULL (the empty grouping set).
_RATES = """
SELECT floor(date_part('epoch', started_at) / 60)::bigint * 60 AS t,
       count(*) FILTER (WHERE status = %(success)s) AS delivered,
       count(*) FILTER (WHERE status <> %(success)s) AS errors,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY date_part('epoch', completed_at - started_at)) * 1000 AS p50_ms,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY date_part('epoch', completed_at - started_at)) * 1000 AS p99_ms
  FROM distribution_attempts
 WHERE started_at >= now() - make_interval(mins => %(minutes)s)
   AND (%(destination)s::text IS NULL OR destination_name = %(destination)s::text)
 GROUP BY GROUPING SETS ((floor(date_part('epoch', started_at) / 60)::bigint * 60), ())"""


def _ms(value: Any) -> float | None:
    return None if value is None else round(float(value), 1)


async def rates(conn: psycopg.AsyncConnection[Any], destination: str | None = None,
                minutes: int = WINDOW_MINUTES) -> dict[str, Any]:
    """Attempts per minute over the window: deliveries, errors, p50/p99 latency; and the
    window's totals (per second) and percentiles."""
    params = {"success": AttemptStatus.SUCCESS.value, "minutes": minutes, "destination": destination}
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_RATES, params)
        found = await cur.fetchall()
    rows = [r for r in found if r["t"] is not None]
    total = next((r for r in found if r["t"] is None), {})
    seconds = minutes * 60
    # Every minute of the window, the quiet ones as 0 (no latency): a chart of one point
    # has no time axis.
    by_minute = {int(r["t"]): r for r in rows}
    last = int(time.time()) // 60 * 60
    minutes_t = list(range(last - (minutes - 1) * 60, last + 60, 60))
    empty = {"delivered": 0, "errors": 0, "p50_ms": None, "p99_ms": None}
    filled = [by_minute.get(t, empty) for t in minutes_t]
    return {
        "window_minutes": minutes,
        "series": {
            "t": minutes_t,
            "delivered_per_s": [round(r["delivered"] / 60, 3) for r in filled],
            "errors_per_s": [round(r["errors"] / 60, 3) for r in filled],
            "p50_ms": [_ms(r["p50_ms"]) for r in filled],
            "p99_ms": [_ms(r["p99_ms"]) for r in filled],
        },
        "delivered": int(total.get("delivered") or 0),
        "errors": int(total.get("errors") or 0),
        "delivered_per_s": round(int(total.get("delivered") or 0) / seconds, 4),
        "errors_per_s": round(int(total.get("errors") or 0) / seconds, 4),
        "p50_ms": _ms(total.get("p50_ms")),
        "p99_ms": _ms(total.get("p99_ms")),
    }


# ---------------------------------------------------------------------------- overview


async def workers(src: Source) -> list[dict[str, Any]]:
    """Workers seen in the last day: heartbeat age, RSS, in flight, and whether their
    Redis heartbeat key is still alive."""
    async with src.connection() as conn:
        rows = await heartbeats.list_workers(conn)
    redis = await src.runtime.redis()
    live = set()
    async for key in redis.scan_iter(match=keys.HEARTBEAT_PATTERN, count=500):
        live.add(key.split(":", 2)[2])
    stale_after = src.settings.service.stale_worker_minutes * 60
    out = []
    for r in rows:
        age = float(r["seconds_since_update"])
        if age > FORGET_WORKERS_AFTER:
            continue
        out.append({"worker_id": r["worker_id"], "host": r["host"], "status": r["status"],
                    "heartbeat_age_s": round(age, 1), "rss_bytes": r["rss_bytes"], "in_flight": r["in_flight"],
                    "live": r["worker_id"] in live, "stale": age > stale_after})
    return out


async def overview(src: Source) -> dict[str, Any]:
    """The overview page's numbers (also ``/console/overview.json`` for live updates)."""
    queue = await src.runtime.queue()
    stats = await queue.stats()
    async with src.connection() as conn:
        window = await rates(conn)
    return {
        "generated_at": logs.iso_utc(dt.datetime.now(dt.UTC)),
        "rates": window,
        "queues": {name: {"length": q["length"], "pending": q["pending"], "delayed": q["delayed"]}
                   for name, q in stats["queues"].items()},
        "total_length": stats["total_length"],
        "total_pending": stats["total_pending"],
        "total_delayed": stats["total_delayed"],
        "dlq_size": stats["dlq"],
        "workers": await workers(src),
    }


# ---------------------------------------------------------------------------- verdict


@dataclass
class Verdict:
    """``diagnose all``, run at most once a minute for every page that shows it."""

    report: dict[str, Any] | None = None
    at: float = 0.0
    task: asyncio.Task[None] | None = None

    async def get(self, src: Source) -> dict[str, Any] | None:
        stale = self.report is None or time.monotonic() - self.at > VERDICT_MAX_AGE
        if stale and (self.task is None or self.task.done()):
            self.task = asyncio.create_task(self._refresh(src))
        if self.report is None and self.task is not None:
            with contextlib.suppress(TimeoutError):  # the first visit waits a little; later ones never
                async with asyncio.timeout(VERDICT_WAIT):
                    await asyncio.shield(self.task)
        if self.report is None:
            return None
        return {**self.report, "age_s": round(time.monotonic() - self.at, 1)}

    async def _refresh(self, src: Source) -> None:
        from ms07.diagnose.model import HEALTHY
        from ms07.diagnose.runner import run_checks_async

        settings = src.settings
        port = getattr(src.engine, "http_port", None)
        if src.engine is not None and not settings.health_url and port and port != settings.service.http_port:
            # http_port 0 (a free port): diagnose health must ask the port this engine bound.
            settings = settings.with_overrides(health_url=f"http://127.0.0.1:{port}")
        try:
            # Its own connections, opened and closed per run: diagnose sets a statement
            # timeout on the sessions it uses, which must not stay on the engine's pool.
            report = await run_checks_async(settings)
        except Exception as exc:  # a verdict that cannot be had is shown as such, never a 500
            self.report = {"status": "UNKNOWN", "findings": [], "error": logs.clip(logs.redact(str(exc)), 300)}
        else:
            ranked = [f for _, f in report.ranked()]
            self.report = {"status": str(report.status), "error": None, "checks": len(report.results),
                           "findings": [{"status": str(f.status), "id": f.id, "summary": f.summary,
                                         "evidence": f.evidence, "remedy": f.remedy, "command": f.command,
                                         "subject": f.subject}
                                        for f in ranked if f.status != HEALTHY][:12]}
        self.at = time.monotonic()

    async def aclose(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task


# ---------------------------------------------------------------------------- destinations

_DEST_STATS = """
SELECT destination_name AS name, count(*) AS attempts,
       count(*) FILTER (WHERE status = %(success)s) AS success,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY date_part('epoch', completed_at - started_at)) * 1000 AS p50_ms,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY date_part('epoch', completed_at - started_at)) * 1000 AS p99_ms
  FROM distribution_attempts
 WHERE started_at >= now() - make_interval(mins => %(minutes)s) AND destination_name = ANY(%(names)s)
 GROUP BY destination_name"""

# Per destination, the newest failure among its LAST_ERROR_SCAN newest attempts of the
# day, read down (destination_name, started_at): bounded work per destination, however
# busy and however healthy it is (no index holds failures by destination).
LAST_ERROR_SCAN = 500
_LAST_ERRORS = """
SELECT d.name, e.error_code, e.error_message, e.response_status_code, e.started_at
  FROM unnest(%(names)s::text[]) AS d(name)
  CROSS JOIN LATERAL (
        SELECT error_code, error_message, response_status_code, started_at
          FROM (SELECT status, error_code, error_message, response_status_code, started_at
                  FROM distribution_attempts a
                 WHERE a.destination_name = d.name
                   AND a.started_at >= now() - make_interval(mins => %(minutes)s)
                 ORDER BY a.started_at DESC LIMIT %(scan)s) recent
         WHERE status <> %(success)s
         ORDER BY started_at DESC LIMIT 1) e"""


async def destinations(src: Source, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Each configured destination (or those of ``names``): circuit, health, success rate
    and p50/p99 over the last hour, its last error of the day. Never a secret: auth is
    its type only."""
    from ms07.ops.destinations import listing

    rows = [d for d in await listing(src.runtime) if names is None or d["name"] in names]
    params = {"success": AttemptStatus.SUCCESS.value, "minutes": WINDOW_MINUTES, "names": [d["name"] for d in rows]}
    async with src.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_DEST_STATS, params)
        stats = {r["name"]: r for r in await cur.fetchall()}
        await cur.execute(_LAST_ERRORS, {**params, "minutes": 24 * 60, "scan": LAST_ERROR_SCAN})
        errors = {r["name"]: r for r in await cur.fetchall()}
    out = []
    for d in rows:
        s = stats.get(d["name"], {})
        e = errors.get(d["name"])
        attempts = int(s.get("attempts") or 0)
        out.append({
            "name": d["name"], "url": logs.safe_url(d["url"]), "enabled": d["enabled"],
            "circuit_state": d["circuit_state"], "health_status": d["health_status"],
            "last_health_check": d["last_health_check"],
            "last_health_error": logs.redact(d["last_health_error"]) if d["last_health_error"] else None,
            "rate_limit_per_second": d["rate_limit_per_second"], "auth": d["auth"],
            "paused": d.get("paused"),  # None until the registry says (runtime destinations)
            "attempts": attempts,
            "success_rate": round(int(s.get("success") or 0) / attempts, 4) if attempts else None,
            "p50_ms": _ms(s.get("p50_ms")), "p99_ms": _ms(s.get("p99_ms")),
            "last_error": None if e is None else {
                "at": e["started_at"], "code": e["error_code"], "status": e["response_status_code"],
                "message": logs.clip(logs.redact(e["error_message"] or ""), 300)},
        })
    return out


async def recent_attempts(conn: psycopg.AsyncConnection[Any], destination: str,
                          limit: int = 50) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            """SELECT distribution_id::text, attempt, status, response_status_code, error_code, error_message,
                      started_at, round((date_part('epoch', completed_at - started_at) * 1000)::numeric, 1)
                      AS latency_ms
                 FROM distribution_attempts WHERE destination_name = %s
                ORDER BY started_at DESC LIMIT %s""",
            (destination, limit),
        )
        rows = await cur.fetchall()
    for r in rows:
        r["error_message"] = logs.clip(logs.redact(r["error_message"]), 300) if r["error_message"] else None
    return rows


# ---------------------------------------------------------------------------- a distribution


async def payload(conn: psycopg.AsyncConnection[Any], distribution_id: str,
                  cap: int = PAYLOAD_CAP) -> dict[str, Any] | None:
    """The first ``cap`` bytes of a payload, pretty-printed when it is whole JSON."""
    async with conn.cursor() as cur:
        await cur.execute(
            """SELECT substring(payload FROM 1 FOR %s), octet_length(payload), content_type
                 FROM distribution_jobs WHERE distribution_id = %s::uuid""",
            (cap, distribution_id),
        )
        row = await cur.fetchone()
    if row is None or row[0] is None:
        return None
    head, size, content_type = bytes(row[0]), int(row[1]), row[2]
    text = head.decode("utf-8", "replace")
    pretty = False
    if size <= cap and "json" in (content_type or ""):
        try:
            text, pretty = json.dumps(json.loads(head), indent=2, ensure_ascii=False), True
        except (ValueError, RecursionError):
            pass
    return {"text": text, "size": size, "truncated": size > cap, "content_type": content_type, "pretty": pretty}


async def recent_replays(conn: psycopg.AsyncConnection[Any], limit: int = 20) -> list[dict[str, Any]]:
    from ms07.ops.replay import shape
    from ms07.store import replays

    return [shape(r) for r in await replays.recent(conn, limit)]
