"""``/api/v1/destinations``: destinations managed at runtime, over HTTP.

The handlers call ms07.ops.dest_admin, as ``ms07 destinations`` does: the same
validation (the config's; an error names the field), the same audit rows (operator
``api``), the same NOTIFY that every engine reloads on. Answers never hold a secret: a
destination is shown with its secret *references* (env var and file names) only.
Errors: 400 bad input, 404 unknown destination, 409 a conflict (it exists; it has
unfinished jobs and no ``open=dead``).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ms07.errors import ConfigError, Conflict, NotFound, UsageError
from ms07.ops import dest_admin

OPERATOR = "api"


def routes() -> list[web.RouteDef]:
    base = "/api/v1/destinations"
    return [
        web.get(base, list_all),
        web.post(base, create),
        web.get(base + "/{name}", get_one),
        web.patch(base + "/{name}", patch),
        web.delete(base + "/{name}", delete),
        web.post(base + "/{name}/pause", pause),
        web.post(base + "/{name}/resume", resume),
        web.post(base + "/{name}/secret/rotate", rotate),
    ]


def _engine(request: web.Request) -> Any:
    from ms07.engine.server import ENGINE

    return request.app[ENGINE]


async def _call(fn: Any, *args: Any, status: int = 200, **kwargs: Any) -> web.Response:
    from ms07.engine.server import _error, _json

    try:
        return _json(await fn(*args, **kwargs), status)
    except (ConfigError, UsageError) as exc:
        return _error(400, str(exc))
    except NotFound as exc:
        return _error(404, str(exc))
    except Conflict as exc:
        return _error(409, str(exc))


async def _body(request: web.Request, *, optional: bool = False) -> dict[str, Any] | web.Response:
    from ms07.engine.server import _json_object

    if optional and not request.can_read_body:
        return {}
    read = await _json_object(request)
    return read if isinstance(read, web.Response) else read[1]


async def list_all(request: web.Request) -> web.Response:
    engine = _engine(request)

    async def run() -> dict[str, Any]:
        async with engine.pool.connection() as conn:
            return {"destinations": [dest_admin.view(r) for r in (await dest_admin.rows(conn)).values()]}

    return await _call(run)


async def get_one(request: web.Request) -> web.Response:
    engine, name = _engine(request), request.match_info["name"]

    async def run() -> dict[str, Any]:
        async with engine.pool.connection() as conn:
            row = (await dest_admin.rows(conn)).get(name)
        if row is None:
            raise NotFound(f"unknown destination {name!r}")
        return dest_admin.view(row)

    return await _call(run)


async def create(request: web.Request) -> web.Response:
    engine = _engine(request)
    body = await _body(request)
    if isinstance(body, web.Response):
        return body

    async def run() -> dict[str, Any]:
        async with engine.pool.connection() as conn:
            return await dest_admin.add(conn, engine.settings, body, operator=OPERATOR)

    return await _call(run, status=201)


async def patch(request: web.Request) -> web.Response:
    engine, name = _engine(request), request.match_info["name"]
    body = await _body(request)
    if isinstance(body, web.Response):
        return body

    async def run() -> dict[str, Any]:
        async with engine.pool.connection() as conn:
            return await dest_admin.edit(conn, engine.settings, name, body, operator=OPERATOR)

    return await _call(run)


async def delete(request: web.Request) -> web.Response:
    engine, name = _engine(request), request.match_info["name"]
    action = request.query.get("open")

    async def run() -> dict[str, Any]:
        async with engine.pool.connection() as conn:
            return await dest_admin.remove(conn, engine.queue, name, open_action=action, operator=OPERATOR)

    return await _call(run)


async def _pause(request: web.Request, paused: bool) -> web.Response:
    engine, name = _engine(request), request.match_info["name"]
    body = await _body(request, optional=True)
    if isinstance(body, web.Response):
        return body
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > 500):
        return await _call(_raise, UsageError("reason must be a string of at most 500 characters"))

    async def run() -> dict[str, Any]:
        async with engine.pool.connection() as conn:
            return await dest_admin.pause(conn, name, paused=paused, operator=OPERATOR, reason=reason)

    return await _call(run)


async def _raise(exc: Exception) -> Any:
    raise exc


async def pause(request: web.Request) -> web.Response:
    return await _pause(request, True)


async def resume(request: web.Request) -> web.Response:
    return await _pause(request, False)


async def rotate(request: web.Request) -> web.Response:
    """A new signing secret; the old one keeps signing beside it for ``keep_previous_seconds``."""
    engine, name = _engine(request), request.match_info["name"]
    body = await _body(request, optional=True)
    if isinstance(body, web.Response):
        return body
    keep = body.get("keep_previous_seconds", dest_admin.DEFAULT_KEEP_PREVIOUS)
    if isinstance(keep, bool) or not isinstance(keep, int | float):
        return await _call(_raise, UsageError("keep_previous_seconds must be a number"))

    async def run() -> dict[str, Any]:
        async with engine.pool.connection() as conn:
            return await dest_admin.rotate_signing(conn, engine.settings, name, operator=OPERATOR,
                                                   secret=body.get("secret"), keep_previous=float(keep))

    return await _call(run)
