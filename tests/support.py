"""Test helpers: real loopback destinations, polling with deadlines, engine processes."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

Behaviour = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


async def ok(request: web.Request, n: int) -> web.StreamResponse:
    return web.Response(text="ok")


def status(code: int, headers: dict[str, str] | None = None, body: str = "") -> Behaviour:
    async def respond(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=code, headers=headers or {}, text=body or f"status {code}")

    return respond


def hang(seconds: float = 30.0) -> Behaviour:
    async def respond(request: web.Request, n: int) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.Response(text="late")

    return respond


def reset() -> Behaviour:
    async def respond(request: web.Request, n: int) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.abort()  # RST: the client sees a dropped connection
        return web.Response(text="never sent")

    return respond


def fail_first(k: int, code: int = 500) -> Behaviour:
    """Fail the first ``k`` requests with ``code``, then succeed."""

    async def respond(request: web.Request, n: int) -> web.StreamResponse:
        if n <= k:
            return web.Response(status=code, text="not yet")
        return web.Response(text="ok")

    return respond


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int | None = None  # what the sink answered (None while it has not answered)


@dataclass
class Sink:
    """A real HTTP server on 127.0.0.1 whose routes can be told how to answer."""

    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    port: int = 0
    _runner: web.AppRunner | None = None

    def url(self, path: str = "/in") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str, behaviour: Behaviour) -> Sink:
        self.behaviours[path] = behaviour
        return self

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.counts[request.path] += 1
        n = self.counts[request.path]
        received = Received(request.path, dict(request.headers), body, time.monotonic())
        self.received.append(received)
        behaviour = self.behaviours.get(request.path, ok)
        response = await behaviour(request, n)
        received.status = response.status
        return response

    async def start(self) -> Sink:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def keys(self, path: str | None = None) -> list[str]:
        return [r.headers.get("Idempotency-Key", "") for r in self.received if path is None or r.path == path]

    def unique_keys(self, path: str | None = None) -> set[str]:
        return set(self.keys(path))


async def wait_for(
    predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05, what: str = "condition"
) -> Any:
    """Poll ``predicate`` (sync or async) until truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


async def submit_n(engine: Any, dest: str, n: int = 1, payload: Any = None) -> list[str]:
    """Submit ``n`` distributions for ``dest`` through an engine's pool and queue (the
    payload, or ``{"i": i}``); their ids, in order."""
    from ms07.ops.submit import submit

    out = []
    async with engine.pool.connection() as conn:
        for i in range(n):
            result = await submit(conn, engine.queue, engine.settings, [dest],
                                  payload if payload is not None else {"i": i})
            out.append(result.distributions[0]["distribution_id"])
    return out


def require_tool(module: str) -> None:
    """A tool from the ``test`` extra (bandit, ruff, ...): missing, the check fails rather than
    turning into a skip."""
    assert importlib.util.find_spec(module) is not None, f"{module} is not installed (pip install -e '.[test]')"


def destination(name: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "url": url, **extra}


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class EngineProcess:
    """``python -m ms07 run`` in a subprocess, for crash and signal tests (on loopback,
    without an API token unless ``env`` names one or turns ``allow_unauthenticated`` off)."""

    def __init__(self, config: Path, env: dict[str, str], log: Path, extra_env: dict[str, str] | None = None,
                 args: list[str] | None = None) -> None:
        self.config = config
        self.args = args or []
        self.env = {**os.environ, "MS07_SERVICE__ALLOW_UNAUTHENTICATED": "true", **env, **(extra_env or {}),
                    "MS07_CONFIG": str(config)}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> EngineProcess:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "ms07", "run", "--http-port", "0", *self.args],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        return self

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return lines

    def started(self) -> bool:
        return any(r.get("message") == "engine started" for r in self.log_lines())

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None


def cli(args: list[str], env: dict[str, str], input: str | None = None) -> Any:
    """Run the ``ms07`` app like the console script does (CliRunner, no subprocess)."""
    from typer.testing import CliRunner

    from ms07.cli import app

    return CliRunner().invoke(app, args, env=env, input=input)


async def acli(args: list[str], env: dict[str, str], input: str | None = None) -> Any:
    """``cli`` from an async test: commands run their own event loop, so use a thread."""
    return await asyncio.to_thread(cli, args, env, input)


# ------------------------------------------------------------------ the OpenAPI description


def _resolve(node: Any, root: dict[str, Any]) -> Any:
    """``node`` with every local ``$ref`` replaced by what it names (the description has
    no recursive schemas)."""
    if isinstance(node, dict):
        if set(node) == {"$ref"}:
            target: Any = root
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            return _resolve(target, root)
        return {k: _resolve(v, root) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, root) for v in node]
    return node


def _operation(method: str, path: str) -> tuple[str, dict[str, Any]] | None:
    import re

    from ms07.engine.openapi import description

    paths = description()["paths"]
    method = "get" if method.upper() == "HEAD" else method.lower()
    for template, item in paths.items():
        pattern = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method in item:
            return template, item[method]
    return None


def check_response(method: str, url: str, status: int, headers: Any, body: bytes) -> None:
    """Fail unless this answer of the engine is one its OpenAPI description allows: the
    status listed for the operation, the media type, the JSON body valid against the
    schema, the headers it names. A path no route serves may only answer the token
    guard's 401 or aiohttp's plain-text 404/405."""
    from urllib.parse import urlsplit

    import jsonschema_rs

    from ms07.engine.openapi import description

    path = urlsplit(url).path  # raw, as the router matches it: %2F stays inside one segment
    # Any client's headers (Schemathesis gives lists of values): one lower-case name each.
    headers = {str(k).lower(): v[0] if isinstance(v, list) else str(v) for k, v in dict(headers).items()}
    media = headers.get("content-type", "").split(";")[0].strip().lower()
    found = _operation(method, path)
    if found is None:
        guard = status == 401 and media == "application/json" and json.loads(body) == {"error": "unauthorized"}
        assert guard or (status in (404, 405) and media == "text/plain"), \
            f"{method} {path} is not in the OpenAPI description, and answered {status} {media}"
        return
    template, operation = found
    where = f"{method} {template} -> {status}"
    response = operation["responses"].get(str(status)) or operation["responses"].get("default")
    assert response is not None, f"{where}: status not in the OpenAPI description"
    response = _resolve(response, description())
    for name, spec in response.get("headers", {}).items():
        assert name.lower() in headers, f"{where}: header {name} missing"
        jsonschema_rs.validate(spec["schema"], headers[name.lower()])
    content = response.get("content", {})
    if not content:  # a 204: no body, no media type
        assert body == b"", f"{where}: a body where the description has none"
        return
    assert media in content, f"{where}: media type {media!r} not in {sorted(content)}"
    if method.upper() == "HEAD":
        return
    value: Any = json.loads(body) if media == "application/json" else body.decode("utf-8")
    errors = [f"{e.message} at {list(e.instance_path)}"
              for e in jsonschema_rs.Draft202012Validator(content[media]["schema"]).iter_errors(value)]
    assert not errors, f"{where}: the body does not match the OpenAPI description: {errors[:3]}"
