"""Fixtures for the observability tests: an HTTP client, the API token, and a Redis of
our own that a test may stop (never the session's shared one). ``start_engine`` and
``captured_logs`` come from tests/conftest.py."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ms07 import embedded
from ms07.config import Settings
from ms07.engine.engine import Engine
from tests.support import Sink, check_response

TOKEN = "obs-api-token-7f3a9c1d2e"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """A client whose every answer (from an engine: these tests talk to nothing else) is
    checked against the OpenAPI description."""

    async def conforms(response: httpx.Response) -> None:
        await response.aread()
        check_response(response.request.method, str(response.url), response.status_code, response.headers,
                       response.content)

    async with httpx.AsyncClient(timeout=15.0, event_hooks={"response": [conforms]}) as client:
        yield client


def base(engine: Engine) -> str:
    return f"http://127.0.0.1:{engine.http_port}"


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api_token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MS07_API_TOKEN", TOKEN)
    return TOKEN


@pytest.fixture
def healthy_sink_settings(make_settings: Callable[..., Settings], sink: Sink) -> Callable[..., Settings]:
    """Settings with destinations on the sink, each with a health URL that answers 200."""

    def make(*names: str, **sections: Any) -> Settings:
        dests = [{"name": n, "url": sink.url(f"/{n}"), "health_url": sink.url(f"/{n}/health")} for n in names or ("a",)]
        return make_settings(destinations=dests, **sections)

    return make


class PrivateRedis:
    """A redis-server on a free loopback port, started and stopped by the test."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(  # noqa: S603 - the embedded binary, fixed arguments
            [embedded.redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("private redis-server did not answer")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    r = PrivateRedis(tmp_path / "private-redis").start()
    try:
        yield r
    finally:
        r.stop()
