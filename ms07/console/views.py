"""The console's pages: an aiohttp sub-application mounted under ``/console``.

Server-rendered HTML (Jinja2, autoescaped); every action is a plain form POST followed by
a redirect, so everything works with JavaScript off. ``static/console.js`` only redraws
the overview's chart and numbers every few seconds. The guard (``security.py``) runs
before every handler: a session or the login form, CSRF on every POST, the viewer role
refused on every POST but logout.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from aiohttp import web

from ms07 import __version__, logs
from ms07.console import data
from ms07.console.security import HEADERS, LOGIN_COOKIE, SESSION_COOKIE, Guard, Session, same_origin
from ms07.diagnose.model import fmt_bytes
from ms07.errors import NotFound, UsageError

log = logs.get("console")
HERE = Path(__file__).parent
SOURCE: web.AppKey[data.Source] = web.AppKey("console_source", data.Source)
GUARD = web.AppKey("console_guard", Guard)
TASKS = web.AppKey("console_tasks", set)
SESSION: web.RequestKey[Session | None] = web.RequestKey("console_session")
PREFIX = "/console"
OPEN = frozenset({f"{PREFIX}/login"})
SEARCH_FIELDS = ("destination", "status", "since", "until", "correlation_id")
OPERATOR_NAME = "console"
PAGE_TIMEOUT = 15.0


def _age(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    seconds = (dt.datetime.now(dt.UTC) - value).total_seconds()
    return data_age(seconds)


def data_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f}s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h ago"
    return f"{seconds / 86400:.0f}d ago"


def _time(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return logs.iso_utc(value)


ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,  # every value is escaped: payloads, error messages, names
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters.update(age=_age, bytes=fmt_bytes, time=_time, seconds_ago=data_age)


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    session: Session | None = request.get(SESSION)
    guard = request.app[GUARD]
    text = ENV.get_template(template).render(
        session=session, can_act=bool(session and session.can_act),
        csrf=guard.csrf(session) if session else "", version=__version__, path=request.path,
        open_console=guard.open, query=request.rel_url.query, **context)
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def _error_page(request: web.Request, status: int, message: str) -> web.Response:
    return render(request, "error.html", status, status_code=status, message=message)


# ---------------------------------------------------------------------------- the guard


@web.middleware
async def _guard(request: web.Request, handler: Any) -> web.StreamResponse:
    guard = request.app[GUARD]
    if request.path.startswith(f"{PREFIX}/static/"):
        response = await handler(request)
        response.headers.update(HEADERS)
        return response
    fresh: str | None = None
    session = guard.read(request.cookies.get(SESSION_COOKIE))
    if session is None and guard.open:
        fresh, session = guard.issue("operator")
    if request.path not in OPEN:
        if session is None:
            if request.method == "GET":
                target = request.path_qs if request.path != f"{PREFIX}/login" else PREFIX + "/"
                raise _finish(request, web.HTTPSeeOther(f"{PREFIX}/login?{urlencode({'next': target})}"))
            response = _error_page(request, 401, "not logged in (or the session expired): log in again")
            response.headers.update(HEADERS)
            return response
        request[SESSION] = session
        if request.method == "POST":
            refusal = await _check_post(request, guard, session)
            if refusal is not None:
                refusal.headers.update(HEADERS)
                return refusal
    else:
        request[SESSION] = session
    try:
        async with asyncio.timeout(PAGE_TIMEOUT):  # a hung PostgreSQL or Redis: an answer, not a hung page
            response = await handler(request)
    except web.HTTPException as exc:
        if fresh is not None:
            guard.set_session(request, exc, fresh)
        raise _finish(request, exc) from None
    except UsageError as exc:
        response = _error_page(request, 400, str(exc))
    except NotFound as exc:
        response = _error_page(request, 404, str(exc))
    except Exception as exc:
        import psycopg
        from redis.exceptions import RedisError

        from ms07.errors import DependencyUnavailable

        # OSError takes in TimeoutError (PAGE_TIMEOUT), OperationalError the pool's timeout;
        # DependencyUnavailable is the Runtime's "cannot connect" (ms07 console).
        if not isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | RedisError | OSError
                          | DependencyUnavailable):
            raise
        log.warning("storage unavailable; console page refused", path=request.path,
                    error=logs.clip(logs.redact(str(exc)), 200))
        response = _error_page(request, 503, "PostgreSQL or Redis does not answer; retry in a moment")
    if fresh is not None:
        guard.set_session(request, response, fresh)
    return _finish(request, response)


def _finish(request: web.Request, response: Any) -> Any:
    response.headers.update(HEADERS)
    response.headers.setdefault("Cache-Control", "no-store")
    return response


async def _check_post(request: web.Request, guard: Guard, session: Session) -> web.Response | None:
    if not same_origin(request):
        return _error_page(request, 403, "refused: the request came from another site")
    form = await request.post()
    given = form.get("csrf") or request.headers.get("X-CSRF-Token")
    if not guard.csrf_ok(session, given if isinstance(given, str) else None):
        log.warning("console POST without a valid CSRF token refused", path=request.path)
        return _error_page(request, 403, "refused: the form's CSRF token is missing or stale; reload the page")
    if not session.can_act and request.path != f"{PREFIX}/logout":
        return _error_page(request, 403, "refused: the read-only token may look but not act")
    return None


# ---------------------------------------------------------------------------- login


async def login_form(request: web.Request) -> web.StreamResponse:
    import secrets

    guard = request.app[GUARD]
    if request.get(SESSION) is not None:
        raise web.HTTPSeeOther(_next(request.query.get("next")))
    nonce = secrets.token_hex(16)
    response = render(request, "login.html", login_csrf=guard.login_csrf(nonce),
                      next=_next(request.query.get("next")), failed=False)
    guard.set_login(request, response, nonce)
    return response


def _next(target: str | None) -> str:
    # Only a path of this console: never an open redirect.
    if target and target.startswith(PREFIX + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return PREFIX + "/"


async def login(request: web.Request) -> web.StreamResponse:
    import hmac
    import secrets

    guard = request.app[GUARD]
    form = await request.post()
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    given_csrf = str(form.get("csrf") or "")
    if not same_origin(request) or not nonce or not hmac.compare_digest(given_csrf.encode(),
                                                                         guard.login_csrf(nonce).encode()):
        return _error_page(request, 403, "refused: the login form is stale or came from another site; "
                                         "open the login page again")
    role = guard.role_for(str(form.get("token") or ""))
    if role is None:
        log.warning("console login refused: wrong token", remote=request.remote)
        fresh = secrets.token_hex(16)
        response = render(request, "login.html", 401, login_csrf=guard.login_csrf(fresh),
                          next=_next(str(form.get("next") or "")), failed=True)
        guard.set_login(request, response, fresh)
        return response
    cookie, _ = guard.issue(role)
    log.info("console login", role=role, remote=request.remote)
    response = web.HTTPSeeOther(_next(str(form.get("next") or "")))
    guard.set_session(request, response, cookie)
    response.del_cookie(LOGIN_COOKIE, path=PREFIX)
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    response = web.HTTPSeeOther(f"{PREFIX}/login")
    Guard.clear(response)
    raise response


# ---------------------------------------------------------------------------- overview


async def overview(request: web.Request) -> web.Response:
    src = request.app[SOURCE]
    numbers = await data.overview(src)
    verdict = await src.verdict.get(src)
    return render(request, "overview.html", o=numbers, verdict=verdict,
                  destination_names=set(src.settings.destination_names))


async def overview_json(request: web.Request) -> web.Response:
    numbers = await data.overview(request.app[SOURCE])
    return web.Response(text=json.dumps(numbers, default=str), content_type="application/json")


# ---------------------------------------------------------------------------- distributions


def _filter_query(request: web.Request, statuses: tuple[str, ...] = ()) -> dict[str, str]:
    """The search fields of the URL, as the API takes them; status given as several
    checkboxes (status=dead&status=failed) or one comma list."""
    q: dict[str, str] = {}
    for name in SEARCH_FIELDS:
        values = [v.strip() for v in request.query.getall(name, []) if v.strip()]
        if values:
            q[name] = ",".join(values)
    if statuses and "status" not in q:
        q["status"] = ",".join(statuses)
    return q


async def distributions(request: web.Request) -> web.Response:
    from ms07.ops import search

    src = request.app[SOURCE]
    q = _filter_query(request)
    page: dict[str, Any] = {"distributions": [], "next_cursor": None}
    error = None
    try:
        flt = search.parse_filter(q)
        async with src.connection() as conn:
            page = await search.search(conn, flt, search.DEFAULT_LIMIT, request.query.get("cursor") or None)
    except UsageError as exc:
        error = str(exc)
    next_link = (f"{PREFIX}/distributions?{urlencode({**q, 'cursor': page['next_cursor']})}"
                 if page["next_cursor"] else None)
    return render(request, "distributions.html", 400 if error else 200, page=logs.scrub(page), q=q, error=error,
                  next_link=next_link, statuses=search.STATUSES, destination_names=src.settings.destination_names)


async def distribution(request: web.Request) -> web.Response:
    from ms07.ops.status import distribution_status

    src = request.app[SOURCE]
    did = request.match_info["distribution_id"]
    async with src.connection() as conn:
        job = await distribution_status(conn, did)
        if job is None:
            raise NotFound(f"no distribution {did}")
        body = await data.payload(conn, job["distribution_id"])
    return render(request, "distribution.html", job=logs.scrub(job), payload=body)


# ---------------------------------------------------------------------------- DLQ and replays


async def dlq(request: web.Request) -> web.Response:
    from ms07.ops import replay, search

    src = request.app[SOURCE]
    q = _filter_query(request, replay.PARKED)
    error = None
    page: dict[str, Any] = {"distributions": [], "next_cursor": None}
    try:
        flt = search.parse_filter(q)
        bad = [s for s in flt.statuses if s not in replay.PARKED]
        if bad:
            raise UsageError(f"status {bad[0]} is not parked: the DLQ holds {', '.join(replay.PARKED)}")
        async with src.connection() as conn:
            page = await search.search(conn, flt, search.DEFAULT_LIMIT, request.query.get("cursor") or None)
    except UsageError as exc:
        error = str(exc)
    queue = await src.runtime.queue()
    stream = int(await queue.redis.xlen("distribution:dlq"))
    next_link = (f"{PREFIX}/dlq?{urlencode({**q, 'cursor': page['next_cursor']})}" if page["next_cursor"] else None)
    return render(request, "dlq.html", 400 if error else 200, page=logs.scrub(page), q=q, error=error,
                  next_link=next_link, stream_length=stream, statuses=replay.PARKED,
                  destination_names=src.settings.destination_names,
                  replayed=request.query.get("replayed"))


async def dlq_replay(request: web.Request) -> web.StreamResponse:
    """Replay the selected parked jobs: the first POST shows how many, the second runs."""
    from ms07.ops import dlq as dlq_ops

    src = request.app[SOURCE]
    form = await request.post()
    ids = dlq_ops.check_ids([str(i) for i in form.getall("id", [])])
    if not ids:
        raise UsageError("select at least one job to replay")
    if form.get("confirm") != "yes":
        return render(request, "confirm_ids.html", ids=ids)
    queue = await src.runtime.queue()
    async with src.connection() as conn:
        done = await dlq_ops.replay(conn, queue, src.settings, ids)
    log.info("console replayed parked jobs", count=len(done), asked=len(ids))
    raise web.HTTPSeeOther(f"{PREFIX}/dlq?{urlencode({'replayed': len(done)})}")


async def replay_new(request: web.Request) -> web.Response:
    """The dry run of a replay by filter: the count and a sample, then the button."""
    from ms07.ops import replay

    src = request.app[SOURCE]
    q = _filter_query(request)
    q.pop("correlation_id", None)
    req = replay.parse_request(q)
    async with src.connection() as conn:
        found = await replay.preview(conn, req)
    return render(request, "replay_new.html", found=logs.scrub(found), q=q)


async def replay_start(request: web.Request) -> web.StreamResponse:
    from ms07.ops import replay

    src = request.app[SOURCE]
    form = await request.post()
    raw = {k: str(v) for k, v in form.items() if k in ("destination", "status", "since", "until") and str(v)}
    req = replay.parse_request(raw)
    # On an engine, the engine's replay runner runs it (as POST /api/v1/replays): should
    # that engine die, another engine's upkeep continues it. `ms07 console` on its own
    # runs it here, and the operator starts it again to resume.
    runner = "engine" if src.engine is not None else "cli"
    async with src.connection() as conn:
        planned, resumed = await replay.plan(conn, req, OPERATOR_NAME, runner=runner)
    if planned["status"] in ("running", "interrupted"):
        if src.engine is not None:
            src.engine.replays.start(planned["replay_id"], replay.DEFAULT_RATE)
        else:
            task = asyncio.create_task(_run_replay(src, planned["replay_id"]))
            request.app[TASKS].add(task)
            task.add_done_callback(request.app[TASKS].discard)
    log.info("console replay started", replay_id=planned["replay_id"], matched=planned["matched"], resumed=resumed)
    raise web.HTTPSeeOther(f"{PREFIX}/replays/{planned['replay_id']}")


async def _run_replay(src: data.Source, replay_id: str) -> None:
    from ms07.ops import replay

    try:
        async with src.connection() as conn:
            await replay.run(conn, await src.runtime.queue(), src.settings, replay_id)
    except replay.ReplayBusy:
        log.info("replay already running elsewhere", replay_id=replay_id)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("replay failed; start it again from the console to resume", replay_id=replay_id)


async def replays(request: web.Request) -> web.Response:
    src = request.app[SOURCE]
    async with src.connection() as conn:
        rows = await data.recent_replays(conn)
    return render(request, "replays.html", replays=rows)


async def replay_page(request: web.Request) -> web.Response:
    from ms07.ops import replay

    src = request.app[SOURCE]
    async with src.connection() as conn:
        row = await replay.get(conn, request.match_info["replay_id"])
    return render(request, "replay.html", r=logs.scrub(row))


async def replay_cancel(request: web.Request) -> web.StreamResponse:
    from ms07.ops import replay

    src = request.app[SOURCE]
    rid = request.match_info["replay_id"]
    async with src.connection() as conn:
        await replay.cancel(conn, rid, OPERATOR_NAME)
    raise web.HTTPSeeOther(f"{PREFIX}/replays/{rid}")


# ---------------------------------------------------------------------------- destinations


async def destinations(request: web.Request) -> web.Response:
    rows = await data.destinations(request.app[SOURCE])
    return render(request, "destinations.html", destinations=rows)


async def destination(request: web.Request, probe: list[dict[str, Any]] | None = None) -> web.Response:
    src = request.app[SOURCE]
    name = request.match_info["name"]
    rows = await data.destinations(src, [name])
    if not rows:
        raise NotFound(f"no destination {name}")
    async with src.connection() as conn:
        attempts = await data.recent_attempts(conn, name)
        window = await data.rates(conn, destination=name)
    return render(request, "destination.html", d=rows[0], attempts=attempts, rates=window,
                  probe=logs.scrub(probe[0]) if probe else None)


async def destination_check(request: web.Request) -> web.Response:
    from ms07.ops.dest_admin import settings_in_force
    from ms07.ops.destinations import check

    src = request.app[SOURCE]
    name = request.match_info["name"]
    async with src.connection() as conn:  # the destinations in force, on the console's own connections
        settings = await settings_in_force(conn, src.settings)
    probe = await check(settings, [name])  # NotFound for a name not in force
    for p in probe:
        p["url"] = logs.safe_url(p.get("url"))
    return await destination(request, probe)


async def _set_paused(request: web.Request, paused: bool) -> web.StreamResponse:
    """Pause or resume a destination (audited as the API's; every engine hears of it
    within a second), then back to its page."""
    from ms07.ops import dest_admin

    src = request.app[SOURCE]
    name = request.match_info["name"]
    async with src.connection() as conn:
        await dest_admin.pause(conn, name, paused=paused, operator="console",
                               reason="paused from the console" if paused else None)
    log.info("console paused a destination" if paused else "console resumed a destination", destination=name)
    raise web.HTTPSeeOther(f"{PREFIX}/destinations/{quote(name, safe='')}")


async def destination_pause(request: web.Request) -> web.StreamResponse:
    return await _set_paused(request, True)


async def destination_resume(request: web.Request) -> web.StreamResponse:
    return await _set_paused(request, False)


# ---------------------------------------------------------------------------- the app


async def _index(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther(f"{PREFIX}/")


async def _cleanup(app: web.Application) -> None:
    tasks = list(app[TASKS])
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await app[SOURCE].verdict.aclose()


def build(source: data.Source, guard: Guard) -> web.Application:
    app = web.Application(middlewares=[_guard])
    app[SOURCE] = source
    app[GUARD] = guard
    app[TASKS] = set()
    app.on_cleanup.append(_cleanup)
    app.add_routes([
        web.get("/", overview),
        web.get("/login", login_form),
        web.post("/login", login),
        web.post("/logout", logout),
        web.get("/overview.json", overview_json),
        web.get("/distributions", distributions),
        web.get("/distributions/{distribution_id}", distribution),
        web.get("/dlq", dlq),
        web.post("/dlq/replay", dlq_replay),
        web.get("/replays", replays),
        web.get("/replays/new", replay_new),
        web.post("/replays", replay_start),
        web.get("/replays/{replay_id}", replay_page),
        web.post("/replays/{replay_id}/cancel", replay_cancel),
        web.get("/destinations", destinations),
        web.get("/destinations/{name}", destination),
        web.post("/destinations/{name}/check", destination_check),
        web.post("/destinations/{name}/pause", destination_pause),
        web.post("/destinations/{name}/resume", destination_resume),
    ])
    app.router.add_static("/static", HERE / "static")
    return app


def mount(parent: web.Application, source: data.Source, guard: Guard) -> None:
    """Serve the console under ``/console`` of ``parent`` (the engine's server or
    ``ms07 console``'s own)."""
    parent.add_subapp(PREFIX, build(source, guard))
    parent.router.add_get(PREFIX, _index)

