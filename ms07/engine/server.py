"""The engine's HTTP server (aiohttp.web): health, metrics, the submit API, debug.

``/health/live`` (the liveness probe) and ``/metrics`` (Prometheus scrapes) are open;
every other path -- ``/health/ready``, ``/health/detailed``, ``/api/*``, ``/debug/*``,
unknown paths too -- needs ``Authorization: Bearer <token>`` (``MS07_API_TOKEN`` or
``service.api_token_file``), compared in constant time; a missing or wrong token gets 401
``{"error": "unauthorized"}`` and nothing else. Without a token the engine does not start
(:meth:`Settings.api_listen`) unless ``service.allow_unauthenticated: true`` says so, and
then listens on loopback unless ``service.http_host`` says otherwise.

``/debug/memory`` answers only with ``service.debug_memory: true``; tracing starts with
the server so that the first snapshot already sees the engine's allocations.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import decimal
import hmac
import json
import logging
import os
import socket
import time
import tracemalloc
from typing import TYPE_CHECKING, Any

import psycopg
from aiohttp import web
from redis.exceptions import RedisError

from ms07 import __version__, logs
from ms07.config import Settings
from ms07.engine import health, openapi
from ms07.engine.body import BodyError, batch_limit, body_limit, read_body, single_limit, too_large
from ms07.engine.upkeep import rss_bytes
from ms07.errors import ConfigError, UsageError
from ms07.ops.submit import BatchRefused, batch_from_json, from_json, submit_many, submit_with

if TYPE_CHECKING:
    from ms07.engine.engine import Engine

log = logs.get("api")
ENGINE: web.AppKey[Engine] = web.AppKey("engine")  # the type for checkers only: Engine imports this module
BODY_LIMIT = web.AppKey("body_limit", int)


OPEN_PATHS = frozenset({"/health/live", "/metrics"})
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TRACE_FRAMES = 10


def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return logs.iso_utc(value)
    if isinstance(value, decimal.Decimal):
        return float(value)
    return str(value)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(data, default=_default), status=status, content_type="application/json", headers=headers
    )


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


class ApiToken:
    """The bearer token guarding the API. From ``service.api_token_file`` it follows the
    file: a rotated Kubernetes Secret (the kubelet swaps the mounted file) takes effect
    within ``RECHECK_SECONDS``, without a restart. A file that turns unreadable or empty
    keeps the last token: the guard never opens by itself. A source that is empty at
    start is refused there (``api_token(strict=True)``); an engine started without any
    source (``service.allow_unauthenticated``) stays open: nothing to rotate."""

    RECHECK_SECONDS = 1.0

    def __init__(self, settings: Settings, *, read_only: bool = False) -> None:
        # read_only: the second token (MS07_API_READ_TOKEN, service.read_only_token_file).
        self._settings = settings
        self._read = settings.read_token if read_only else settings.api_token
        token = self._read(strict=True)
        self.value: bytes | None = token.encode() if token else None
        env = bool(os.environ.get("MS07_API_READ_TOKEN" if read_only else "MS07_API_TOKEN"))
        file = settings.service.read_only_token_file if read_only else settings.service.api_token_file
        self._path = file if self.value is not None and not env else None
        self._stamp = self._stat()
        self._checked = time.monotonic()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(os.path.expanduser(self._path)) if self._path else None
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino) if st else None

    def current(self) -> bytes | None:
        if self._path is not None and time.monotonic() - self._checked >= self.RECHECK_SECONDS:
            self._checked = time.monotonic()
            stamp = self._stat()
            if stamp is not None and stamp != self._stamp:
                self._stamp = stamp
                try:
                    token = self._read()
                except ConfigError as exc:
                    log.warning("cannot re-read the API token file; keeping the previous token", error=str(exc))
                    return self.value
                if token and token.encode() != self.value:
                    logs.register_secret(token)
                    self.value = token.encode()
                    log.info("API token file changed; the new token is in force")
        return self.value


def _console_path(path: str) -> bool:
    return path == "/console" or path.startswith("/console/")


# PostgreSQL or Redis away: the client retries (with the same idempotency_key a submit
# retried after an unknown outcome makes no second job).
_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, RedisError, OSError)


def _front(token: ApiToken, read_token: ApiToken) -> Any:
    """The one middleware every request passes (one layer, not three: it runs per request):

    - the token guard: deny by default, only the two probe paths are open, whatever the
      router knows; the console has its own guard (session cookie, CSRF:
      ms07/console/security.py); the read-only token may read, not act (403);
    - lines logged while serving a request carry its X-Correlation-ID;
    - failures answer JSON too: PostgreSQL or Redis away is a 503, logged as a warning;
      anything else a 500 with its traceback in the log."""

    @web.middleware
    async def front(request: web.Request, handler: Any) -> web.StreamResponse:
        expected = token.current()
        if expected is not None and request.path not in OPEN_PATHS and not _console_path(request.path):
            scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
            raw = given.strip().encode("utf-8", "surrogateescape")
            ok = hmac.compare_digest(raw, expected)
            viewer = read_token.current()
            read_only = viewer is not None and hmac.compare_digest(raw, viewer)
            if not ((ok or read_only) and scheme.lower() == "bearer"):
                return _json({"error": "unauthorized"}, 401, {"WWW-Authenticate": "Bearer"})
            if read_only and not ok and request.method not in READ_METHODS:
                return _error(403, "the read-only token may read, not act")
        correlation = request.headers.get("X-Correlation-ID")
        bound = logs.bind(correlation_id=correlation) if correlation and 0 < len(correlation) <= 200 else _UNBOUND
        with bound:
            try:
                return await handler(request)
            except web.HTTPException:
                raise
            except _UNAVAILABLE as exc:
                log.warning("storage unavailable; request refused", path=request.path,
                            error=logs.clip(str(exc), 200))
                return _error(503, "storage unavailable; retry later")
            except Exception:
                log.exception("request failed", path=request.path)
                return _error(500, "internal error")

    return front


_UNBOUND = contextlib.nullcontext()


async def live(request: web.Request) -> web.Response:
    """200 while the event loop turns: answering at all is the proof."""
    return _json({"status": "alive", "timestamp": _now(), "version": __version__})


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def ready(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    report = await health.readiness(engine)
    return _json(report, 503 if report["status"] == "unhealthy" else 200)


async def detailed(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    report = await health.detailed(engine)
    return _json(report, 503 if report["status"] == "unhealthy" else 200)


async def metrics(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    body = engine.metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": engine.metrics.content_type})



async def _json_object(request: web.Request) -> tuple[bytes, dict[str, Any]] | web.Response:
    """The request's body, read within the body limit and parsed as a JSON object, or the
    error answer to send instead."""
    try:
        raw = await read_body(request, request.app[BODY_LIMIT])
    except BodyError as exc:
        resp = _error(exc.status, str(exc))
        if exc.status == 413:
            resp.force_close()  # the rest of the body is not worth waiting for
        return resp
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return _error(400, "request body is not valid JSON")
    except RecursionError:
        return _error(400, "request body is nested too deeply")
    if not isinstance(body, dict):
        return _error(400, "request body must be a JSON object")
    return raw, body

async def submit(request: web.Request) -> web.Response:
    """One submission, or a batch (``{"distributions": [...]}``): all accepted in one
    commit, or none, with the index and reason of each bad item."""
    engine = request.app[ENGINE]
    if engine.draining:
        return _error(503, "draining: not accepting new distributions")
    read = await _json_object(request)
    if isinstance(read, web.Response):
        return read
    raw, body = read
    batch = "distributions" in body
    limit = (batch_limit if batch else single_limit)(engine.settings)
    if len(raw) > limit:  # read up to the larger of the two limits
        return _error(413, str(too_large(f"{len(raw)} bytes", limit, batch)))
    header_correlation = request.headers.get("X-Correlation-ID") or None
    try:
        if batch:
            items = batch_from_json(body, engine.settings.service.max_batch_items)
            results = await submit_many(engine.submitter, engine.settings, items, header_correlation)
            return _json({"distributions": [{**r.as_json(), "replayed": r.replayed} for r in results]},
                         200 if all(r.replayed for r in results) else 202)
        result = await submit_with(engine.submitter, engine.settings, **from_json(body, header_correlation))
    except BatchRefused as exc:
        return _json({"error": str(exc), "items": [{"index": i, "error": str(e)} for i, e in exc.items]},
                     exc.http_status)
    except UsageError as exc:
        return _error(getattr(exc, "http_status", 400), str(exc))
    if log.enabled(logging.DEBUG):
        for d in result.distributions:
            log.debug("distribution accepted", distribution_id=d["distribution_id"], destination=d["destination"],
                      correlation_id=result.correlation_id, replayed=result.replayed)
    return _json(result.as_json(), 200 if result.replayed else 202)


async def get_distribution(request: web.Request) -> web.Response:
    from ms07.ops.status import distribution_status

    engine = request.app[ENGINE]
    async with engine.pool.connection() as conn:
        data = await distribution_status(conn, request.match_info["distribution_id"])
    if data is None:
        return _error(404, "no such distribution")
    # Error messages hold response bodies, and a destination may echo our credentials.
    return _json(logs.scrub(data))


async def list_distributions(request: web.Request) -> web.Response:
    """``GET /api/v1/distributions?destination=&status=&since=&until=&...&limit=&cursor=``."""
    from ms07.ops import search

    engine: Engine = request.app[ENGINE]  # type: ignore[assignment]
    query = {k: v for k, v in request.query.items() if k not in ("limit", "cursor")}
    try:
        if len(request.query.getall("status", [])) > 1:
            raise UsageError("give status once, comma-separated (status=dead,failed)")
        flt = search.parse_filter(query)
        limit = search.parse_limit(request.query.get("limit"))
        async with engine.pool.connection() as conn:
            page = await search.search(conn, flt, limit, request.query.get("cursor") or None)
    except UsageError as exc:
        return _error(400, str(exc))
    return _json(logs.scrub(page))


async def get_attempts(request: web.Request) -> web.Response:
    from ms07.ops.status import distribution_status

    engine: Engine = request.app[ENGINE]  # type: ignore[assignment]
    async with engine.pool.connection() as conn:
        data = await distribution_status(conn, request.match_info["distribution_id"])
    if data is None:
        return _error(404, "no such distribution")
    return _json(logs.scrub({"attempts": data["attempts"]}))


async def delete_payload(request: web.Request) -> web.Response:
    """``DELETE /api/v1/distributions/{id}/payload``: expunge a finished job's payload now
    (204, also when it was already gone); 404 unknown; 409 while the job is open."""
    from ms07.ops import expunge

    engine: Engine = request.app[ENGINE]  # type: ignore[assignment]
    did = request.match_info["distribution_id"]
    try:
        ids = expunge.check_ids([did])
    except UsageError:
        return _error(404, "no such distribution")
    operator = logs.clip(request.headers.get("X-Operator") or "api", 100)
    async with engine.pool.connection() as conn:
        result = await expunge.expunge(conn, ids, operator, f"DELETE {request.path}")
    outcome = result.outcome[ids[0]]
    if outcome == "unknown":
        return _error(404, "no such distribution")
    if outcome == "open":
        return _error(409, "the distribution is not finished: its delivery still needs the payload; "
                           "expunge it once it is delivered, failed or dead")
    return web.Response(status=204)


async def post_replay(request: web.Request) -> web.Response:
    """``POST /api/v1/replays``: a dry run (200: count and sample), or a replay run by this
    engine in the background (202; the same filter again resumes an unfinished one)."""
    from ms07.ops import replay

    engine: Engine = request.app[ENGINE]  # type: ignore[assignment]
    if engine.draining:
        return _error(503, "draining: not starting replays")
    read = await _json_object(request)
    if isinstance(read, web.Response):
        return read
    body = read[1]
    dry_run, rate = body.pop("dry_run", False), body.pop("rate", replay.DEFAULT_RATE)
    include = body.pop("include_delivered", False)
    operator = logs.clip(request.headers.get("X-Operator") or "api", 100)
    try:
        if not isinstance(dry_run, bool):
            raise UsageError("dry_run must be true or false")
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0:
            raise UsageError("rate must be a number above 0 (jobs a second)")
        req = replay.parse_request(body, include)
        async with engine.pool.connection() as conn:
            if dry_run:
                found = await replay.preview(conn, req)
                return _json(logs.scrub({"replay_id": None, "status": "dry_run", **found}))
            planned, _ = await replay.plan(conn, req, operator, runner="engine", rate=float(rate))
    except UsageError as exc:
        return _error(400, str(exc))
    if planned["status"] in ("running", "interrupted"):
        # Run here; should this engine die, another one's upkeep continues it.
        engine.replays.start(planned["replay_id"], float(rate))
    return _json({"replay_id": planned["replay_id"], "matched": planned["matched"], "status": planned["status"]},
                 202)


async def replay_status(request: web.Request) -> web.Response:
    """``GET /api/v1/replays/{id}`` (status, counts, progress); ``DELETE`` cancels it."""
    from ms07.errors import NotFound
    from ms07.ops import replay

    engine: Engine = request.app[ENGINE]  # type: ignore[assignment]
    rid = request.match_info["replay_id"]
    operator = logs.clip(request.headers.get("X-Operator") or "api", 100)
    try:
        async with engine.pool.connection() as conn:
            if request.method == "DELETE":
                return _json(await replay.cancel(conn, rid, operator))
            return _json(await replay.get(conn, rid))
    except NotFound as exc:
        return _error(404, str(exc))
    except UsageError as exc:
        return _error(409, str(exc))


class MemoryDebug:
    """``GET /debug/memory``: top allocation sites of a tracemalloc snapshot and their
    growth since the previous call (``?limit=N``, default 25)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.previous: tracemalloc.Snapshot | None = None
        self.previous_at: str | None = None
        self.started_tracing = False
        self._lock = asyncio.Lock()

    def start(self) -> None:
        if self.enabled and not tracemalloc.is_tracing():
            tracemalloc.start(TRACE_FRAMES)
            self.started_tracing = True

    def stop(self) -> None:
        if self.started_tracing and tracemalloc.is_tracing():
            tracemalloc.stop()
        self.started_tracing = False
        self.previous = None

    def _report(self, limit: int) -> dict[str, Any]:
        snapshot = tracemalloc.take_snapshot().filter_traces((
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
            tracemalloc.Filter(False, "<unknown>"),
        ))
        top = snapshot.statistics("lineno")[:limit]
        diff = snapshot.compare_to(self.previous, "lineno")[:limit] if self.previous is not None else []
        current, peak = tracemalloc.get_traced_memory()
        now = _now()
        report: dict[str, Any] = {
            "timestamp": now,
            "previous_snapshot_at": self.previous_at,
            "traced_current_bytes": current,
            "traced_peak_bytes": peak,
            "rss_bytes": rss_bytes(),
            "top": [{"site": str(s.traceback), "size_bytes": s.size, "count": s.count} for s in top],
            "diff": [{"site": str(s.traceback), "size_diff_bytes": s.size_diff, "count_diff": s.count_diff,
                      "size_bytes": s.size, "count": s.count} for s in diff],
        }
        self.previous, self.previous_at = snapshot, now
        return report

    async def handle(self, request: web.Request) -> web.Response:
        if not self.enabled:
            return _error(404, "memory debugging is off (service.debug_memory)")
        try:
            limit = max(1, min(int(request.query.get("limit", "25")), 500))
        except ValueError:
            return _error(400, "limit must be an integer")
        if not tracemalloc.is_tracing():
            self.start()
        async with self._lock:  # one snapshot at a time: each is compared with the last
            # Snapshot and comparison take a while on a big heap: keep the loop serving.
            report = await asyncio.to_thread(self._report, limit)
        return _json(report)


class Server:
    """The running server; ``port`` is the one bound (``http_port: 0`` picks a free one)."""

    def __init__(self, runner: web.AppRunner, site: web.BaseSite, memory: MemoryDebug) -> None:
        self.runner, self.site, self.memory = runner, site, memory
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        await self.runner.cleanup()
        self.memory.stop()


def build_app(engine: Engine, memory: MemoryDebug | None = None) -> web.Application:
    token = ApiToken(engine.settings)
    read_token = ApiToken(engine.settings, read_only=True)
    logs.register_settings(engine.settings)
    memory = memory or MemoryDebug(engine.settings.service.debug_memory)
    limit = body_limit(engine.settings)
    app = web.Application(middlewares=[_front(token, read_token)], client_max_size=limit)
    app[ENGINE] = engine
    app[BODY_LIMIT] = limit
    app.add_routes([
        web.get("/health/live", live),
        web.get("/health/ready", ready),
        web.get("/health/detailed", detailed),
        web.get("/metrics", metrics),
        web.post("/api/v1/distributions", submit),
        web.get("/api/v1/distributions/{distribution_id}", get_distribution),
        web.get("/api/v1/distributions", list_distributions),
        web.get("/api/v1/distributions/{distribution_id}/attempts", get_attempts),
        web.delete("/api/v1/distributions/{distribution_id}/payload", delete_payload),
        web.post("/api/v1/replays", post_replay),
        web.get("/api/v1/replays/{replay_id}", replay_status),
        web.delete("/api/v1/replays/{replay_id}", replay_status),
        web.get("/debug/memory", memory.handle),
        web.get("/api/v1/openapi.json", openapi.handle),
    ])
    from ms07.console import mount_engine
    from ms07.engine import dest_api  # destinations at runtime

    app.add_routes(dest_api.routes())
    mount_engine(app, engine, token, read_token)
    return app


class _MalformedRequests(logging.Filter):
    """aiohttp logs a request it cannot parse (a bad header character, a broken chunk,
    a header line too long) at ERROR with a traceback, once per request: anyone who can
    connect could fill the log with them. The client's mistake becomes one WARNING line."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            reason = " ".join(str(exc.message or type(exc).__name__).split())[:200]
            record.msg, record.args = "malformed HTTP request refused (%s): %s", (exc.code, reason)
            record.exc_info = record.exc_text = None
        return True


async def start_server(engine: Engine, host: str, port: int, sock: socket.socket | None = None) -> Server:
    """``sock``: a listening socket bound already (``ms07 run --workers N`` shares one)."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _MalformedRequests) for f in server_log.filters):
        server_log.addFilter(_MalformedRequests())
    memory = MemoryDebug(engine.settings.service.debug_memory)
    # A short shutdown: aiohttp would otherwise wait up to 60 s for open requests, past the drain grace.
    # auto_decompress off: bodies are inflated by read_body, bounded, with a 4xx for a bad
    # stream (aiohttp's parser raised out of the protocol: a 500 and a reset connection).
    runner = web.AppRunner(build_app(engine, memory), access_log=None, handle_signals=False, shutdown_timeout=2.0,
                           auto_decompress=False)
    await runner.setup()
    site: web.BaseSite = (web.SockSite(runner, sock) if sock is not None
                          else web.TCPSite(runner, host, port, reuse_address=True))
    await site.start()
    memory.start()
    server = Server(runner, site, memory)
    auth = "bearer token" if engine.settings.api_token() else "none"
    log.info("HTTP server listening", host=host, port=server.port, version=__version__, auth=auth,
             debug_memory=memory.enabled)
    if auth == "none":
        log.warning("the API answers without authentication (service.allow_unauthenticated): anyone who "
                    "reaches the port can submit and read distributions", host=host, port=server.port,
                    loopback_only=_loopback(host))
    return server


def _loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
