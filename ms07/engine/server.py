"""The engine's HTTP server (aiohttp.web): health, metrics, the submit API, debug.

``/health/live`` is open (the liveness probe); with ``MS07_API_TOKEN`` set, every other
``/health/*``, ``/api/*`` and ``/debug/*`` route needs ``Authorization: Bearer <token>``,
compared in constant time. ``/metrics`` stays open for Prometheus scrapes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import json
import tracemalloc
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ms07 import __version__, logs
from ms07.engine import health
from ms07.errors import UsageError

if TYPE_CHECKING:
    from ms07.engine.engine import Engine

log = logs.get("api")
ENGINE = web.AppKey("engine", object)
MAX_BODY = 64 * 1024 * 1024


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, default=str), status=status, content_type="application/json"
    )


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


def _token_guard(token: str | None) -> Any:
    expected = f"Bearer {token}".encode() if token else None

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path
        protected = path.startswith(("/api/", "/debug/")) or (
            path.startswith("/health/") and path != "/health/live"
        )
        if expected is not None and protected:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return _error(401, "unauthorized")
        return await handler(request)

    return guard


async def live(request: web.Request) -> web.Response:
    return _json({"status": "alive", "timestamp": _now()})


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def ready(request: web.Request) -> web.Response:
    engine: Engine = request.app[ENGINE]  # type: ignore[assignment]
    report = await health.readiness(engine)
    return _json(report, 503 if report["status"] == "unhealthy" else 200)


async def detailed(request: web.Request) -> web.Response:
    engine: Engine = request.app[ENGINE]  # type: ignore[assignment]
    report = await health.detailed(engine)
    return _json(report, 503 if report["status"] == "unhealthy" else 200)


async def metrics(request: web.Request) -> web.Response:
    engine: Engine = request.app[ENGINE]  # type: ignore[assignment]
    body = engine.metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": engine.metrics.content_type})


async def submit(request: web.Request) -> web.Response:
    from ms07.submit import submit_with

    engine: Engine = request.app[ENGINE]  # type: ignore[assignment]
    if engine.draining:
        return _error(503, "draining: not accepting new distributions")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _error(413, "request body too large")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return _error(400, "request body is not valid JSON")
    if not isinstance(body, dict):
        return _error(400, "request body must be a JSON object")
    unknown = set(body) - {"destinations", "payload", "correlation_id", "priority", "idempotency_key"}
    if unknown:
        return _error(400, f"unknown field {sorted(unknown)[0]!r}")
    dests = body.get("destinations")
    if not isinstance(dests, list) or not dests or not all(isinstance(d, str) for d in dests):
        return _error(400, "destinations must be a non-empty list of destination names")
    if "payload" not in body:
        return _error(400, "payload is required")
    try:
        result = await submit_with(
            engine.submitter,
            engine.settings,
            dests,
            body["payload"],
            correlation_id=body.get("correlation_id"),
            priority=body.get("priority"),
            idempotency_key=body.get("idempotency_key"),
        )
    except UsageError as exc:
        return _error(getattr(exc, "http_status", 400), str(exc))
    return _json(result.as_json(), 200 if result.replayed else 202)


async def get_distribution(request: web.Request) -> web.Response:
    from ms07.status import distribution_status

    engine: Engine = request.app[ENGINE]  # type: ignore[assignment]
    async with engine.pool.connection() as conn:
        data = await distribution_status(conn, request.match_info["distribution_id"])
    if data is None:
        return _error(404, "no such distribution")
    return _json(data)


class _MemoryDebug:
    def __init__(self) -> None:
        self.previous: tracemalloc.Snapshot | None = None

    async def handle(self, request: web.Request) -> web.Response:
        engine: Engine = request.app[ENGINE]  # type: ignore[assignment]
        if not engine.settings.service.debug_memory:
            return _error(404, "memory debugging is off (service.debug_memory)")
        if not tracemalloc.is_tracing():
            tracemalloc.start(10)
        snapshot = await asyncio.to_thread(tracemalloc.take_snapshot)
        snapshot = snapshot.filter_traces((tracemalloc.Filter(False, tracemalloc.__file__),))
        top = snapshot.statistics("lineno")[:25]
        diff = snapshot.compare_to(self.previous, "lineno")[:25] if self.previous else []
        self.previous = snapshot
        current, peak = tracemalloc.get_traced_memory()
        return _json({
            "timestamp": _now(),
            "traced_current_bytes": current,
            "traced_peak_bytes": peak,
            "top": [{"site": str(s.traceback), "size_bytes": s.size, "count": s.count} for s in top],
            "diff": [{"site": str(s.traceback), "size_diff_bytes": s.size_diff, "count_diff": s.count_diff,
                      "size_bytes": s.size} for s in diff],
        })


class Server:
    def __init__(self, runner: web.AppRunner, site: web.TCPSite) -> None:
        self.runner, self.site = runner, site
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        await self.runner.cleanup()


def build_app(engine: Engine) -> web.Application:
    app = web.Application(middlewares=[_token_guard(engine.settings.api_token())], client_max_size=MAX_BODY)
    app[ENGINE] = engine
    memory = _MemoryDebug()
    app.add_routes([
        web.get("/health/live", live),
        web.get("/health/ready", ready),
        web.get("/health/detailed", detailed),
        web.get("/metrics", metrics),
        web.post("/api/v1/distributions", submit),
        web.get("/api/v1/distributions/{distribution_id}", get_distribution),
        web.get("/debug/memory", memory.handle),
    ])
    return app


async def start_server(engine: Engine, host: str, port: int) -> Server:
    # A short shutdown: aiohttp would otherwise wait up to 60 s for open requests, past the drain grace.
    runner = web.AppRunner(build_app(engine), access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    log.info("HTTP server listening", host=host, port=port, version=__version__)
    return Server(runner, site)
