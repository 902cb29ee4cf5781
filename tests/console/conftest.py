"""The console's fixtures: an engine with its console, tokens, a sink, a cookie-keeping client."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.support import Sink

OPERATOR_TOKEN = "op-token-3f9a1c7e5b2d4a60"
VIEWER_TOKEN = "view-token-8e2b6d4f1a3c5e79"


@pytest.fixture
def tokens(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("MS07_API_TOKEN", OPERATOR_TOKEN)
    monkeypatch.setenv("MS07_API_READ_TOKEN", VIEWER_TOKEN)
    return {"operator": OPERATOR_TOKEN, "viewer": VIEWER_TOKEN}


@pytest.fixture
async def console_engine(make_settings: Any, sink: Sink, start_engine: Any, tokens: dict[str, str]) -> Any:
    """An engine with destination ``hooks`` (the sink's /in) and ``flaky`` (its /flaky,
    one attempt, so a 500 parks the job at once)."""
    settings = make_settings(destinations=[
        {"name": "hooks", "url": sink.url("/in")},
        {"name": "flaky", "url": sink.url("/flaky"), "max_attempts": 1,
         "circuit_breaker": {"failure_threshold": 1000}},
    ])
    return await start_engine(settings)


def base(engine: Any) -> str:
    return f"http://127.0.0.1:{engine.http_port}"


CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no CSRF field on the page"
    return found.group(1)


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe: the cookie jar keeps cookies of an IP host (127.0.0.1).
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def log_in(client: aiohttp.ClientSession, url: str, token: str) -> aiohttp.ClientResponse:
    async with client.get(f"{url}/console/login") as resp:
        form = await resp.text()
    return await client.post(f"{url}/console/login", data={"csrf": csrf_of(form), "token": token,
                                                           "next": "/console/"}, allow_redirects=False)
