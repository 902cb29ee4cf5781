"""Auth to destinations against real loopback servers: static secrets and OAuth2."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.support import Sink, submit_n, wait_for


async def _attempts(engine: Any) -> list[tuple[Any, ...]]:
    async with engine.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT attempt, status, response_status_code, error_code, error_message FROM distribution_attempts "
            "ORDER BY started_at, attempt")
        return await cur.fetchall()


async def _count(engine: Any, status: str) -> int:
    async with engine.pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM distribution_jobs WHERE status = %s", (status,))
        return (await cur.fetchone())[0]


class TokenServer:
    """An OAuth2 token endpoint: client credentials in, numbered tokens out."""

    def __init__(self, sink: Sink, expires_in: float = 3600, client_secret: str = "cs-123") -> None:
        self.issued: list[str] = []
        self.expires_in = expires_in
        self.client_secret = client_secret
        self.revoked = False
        self.requests: list[dict[str, Any]] = []
        sink.on("/token", self.token)

    async def token(self, request: web.Request, n: int) -> web.StreamResponse:
        form = dict(await request.post())
        auth = request.headers.get("Authorization", "")
        self.requests.append({"form": form, "auth": auth})
        user, _, secret = base64.b64decode(auth.split(" ", 1)[1]).decode().partition(":") if auth else ("", "", "")
        if self.revoked or secret != self.client_secret or form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "invalid_client"}, status=401)
        token = f"tok-{len(self.issued) + 1}-abcdef"
        self.issued.append(token)
        return web.json_response({"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in})


def accept_tokens(valid: set[str]) -> Any:
    async def respond(request: web.Request, n: int) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if given in valid:
            return web.Response(text="ok")
        return web.Response(status=401, text="invalid token")

    return respond


def oauth_dest(sink: Sink, path: str = "/api", **auth: Any) -> dict[str, Any]:
    return {"name": "ext", "url": sink.url(path), "auth": {
        "type": "oauth2_client_credentials", "token_url": sink.url("/token"), "client_id": "ms07",
        "client_secret_env": "T_CLIENT_SECRET", "scope": "reports:write", "audience": "ms09", **auth}}


async def test_oauth2_token_cached_across_100_concurrent_deliveries(make_settings, sink, start_engine,
                                                                    monkeypatch) -> None:
    monkeypatch.setenv("T_CLIENT_SECRET", "cs-123")
    tokens = TokenServer(sink)
    sink.on("/api", accept_tokens({"tok-1-abcdef"}))
    engine = await start_engine(make_settings(destinations=[oauth_dest(sink)], service={"concurrency": 100}))
    await submit_n(engine, "ext", 100)
    await wait_for(lambda: _count(engine, "delivered"), what="deliveries")
    await wait_for(lambda: _all(engine, 100), what="100 delivered")
    assert len(tokens.requests) == 1  # single flight: one fetch for all of them
    form = tokens.requests[0]["form"]
    assert form == {"grant_type": "client_credentials", "scope": "reports:write", "audience": "ms09"}
    assert tokens.requests[0]["auth"].startswith("Basic ")


async def _all(engine: Any, n: int) -> bool:
    return await _count(engine, "delivered") == n


async def test_oauth2_refreshed_when_expired(make_settings, sink, start_engine, monkeypatch) -> None:
    monkeypatch.setenv("T_CLIENT_SECRET", "cs-123")
    tokens = TokenServer(sink, expires_in=0.3)
    sink.on("/api", accept_tokens({"tok-1-abcdef", "tok-2-abcdef", "tok-3-abcdef"}))
    engine = await start_engine(make_settings(destinations=[oauth_dest(sink, refresh_margin_seconds=0)]))
    await submit_n(engine, "ext", 1)
    await wait_for(lambda: _all(engine, 1))
    client = engine.clients["ext"]
    await wait_for(lambda: client.auth.expires_in() < 0, what="token expiry")
    await submit_n(engine, "ext", 1)
    await wait_for(lambda: _all(engine, 2))
    assert len(tokens.issued) == 2


async def test_401_refreshes_once_then_succeeds(make_settings, sink, start_engine, monkeypatch) -> None:
    monkeypatch.setenv("T_CLIENT_SECRET", "cs-123")
    tokens = TokenServer(sink)
    sink.on("/api", accept_tokens({"tok-2-abcdef"}))  # the first token was revoked upstream
    engine = await start_engine(make_settings(destinations=[oauth_dest(sink)]))
    await submit_n(engine, "ext", 1)
    await wait_for(lambda: _all(engine, 1))
    assert tokens.issued == ["tok-1-abcdef", "tok-2-abcdef"]
    rows = await _attempts(engine)
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        (1, "failed", 401, "AUTHENTICATION_FAILED"), (2, "success", 200, None)]


async def test_revoked_credentials_give_authentication_failed(make_settings, sink, start_engine,
                                                              monkeypatch) -> None:
    monkeypatch.setenv("T_CLIENT_SECRET", "wrong-secret")
    tokens = TokenServer(sink)
    engine = await start_engine(make_settings(destinations=[oauth_dest(sink)], distribution={"max_attempts": 2}))
    await submit_n(engine, "ext", 1)
    await wait_for(lambda: _count(engine, "dead"), what="parked")
    rows = await _attempts(engine)
    assert rows and all(r[3] == "AUTHENTICATION_FAILED" and r[2] == 401 for r in rows)
    assert "token endpoint of ext answered HTTP 401" in rows[0][4]
    assert sink.counts["/api"] == 0
    assert tokens.issued == []


async def test_persistent_403_is_authentication_failed(make_settings, sink, start_engine, monkeypatch) -> None:
    from tests.support import status

    monkeypatch.setenv("T_TOKEN", "static-token-1")
    sink.on("/api", status(403, body="token lacks scope reports:write"))
    engine = await start_engine(make_settings(
        destinations=[{"name": "s", "url": sink.url("/api"), "auth": {"type": "bearer", "token_env": "T_TOKEN"}}],
        distribution={"max_attempts": 2}))
    await submit_n(engine, "s", 1)
    await wait_for(lambda: _count(engine, "dead"))
    rows = await _attempts(engine)
    assert [(r[2], r[3]) for r in rows] == [(403, "AUTHENTICATION_FAILED")] * 2
    assert rows[0][4] == "HTTP 403: token lacks scope reports:write"


@pytest.mark.parametrize("kind", ["bearer", "api_key", "basic", "bearer_file"])
async def test_static_auth_headers(make_settings, sink, start_engine, monkeypatch, tmp_path: Path, kind) -> None:
    monkeypatch.setenv("T_SECRET", "s3cr3t-value")
    secret_file = tmp_path / "token"
    secret_file.write_text("file-s3cr3t\n")
    auth = {
        "bearer": {"type": "bearer", "token_env": "T_SECRET"},
        "bearer_file": {"type": "bearer", "token_file": str(secret_file)},
        "api_key": {"type": "api_key", "header": "X-API-Key", "value_env": "T_SECRET"},
        "basic": {"type": "basic", "username": "ms07", "password_env": "T_SECRET"},
    }[kind]
    engine = await start_engine(make_settings(destinations=[{"name": "s", "url": sink.url("/in"), "auth": auth}]))
    await submit_n(engine, "s", 1)
    await wait_for(lambda: _all(engine, 1))
    headers = sink.received[0].headers
    expected = {
        "bearer": ("Authorization", "Bearer s3cr3t-value"),
        "bearer_file": ("Authorization", "Bearer file-s3cr3t"),
        "api_key": ("X-API-Key", "s3cr3t-value"),
        "basic": ("Authorization", "Basic " + base64.b64encode(b"ms07:s3cr3t-value").decode()),
    }[kind]
    assert headers[expected[0]] == expected[1]


async def test_missing_secret_is_a_clear_retryable_error(make_settings, sink, start_engine) -> None:
    engine = await start_engine(make_settings(
        destinations=[{"name": "s", "url": sink.url("/in"),
                       "auth": {"type": "bearer", "token_env": "NOT_SET_ANYWHERE"}}],
        distribution={"max_attempts": 1}))
    await submit_n(engine, "s", 1)
    await wait_for(lambda: _count(engine, "dead"))
    [row] = await _attempts(engine)
    assert row[3] == "AUTH_CONFIG_ERROR"
    assert "environment variable NOT_SET_ANYWHERE is not set" in row[4]
    assert sink.counts["/in"] == 0


async def test_secrets_never_logged(make_settings, sink, start_engine, monkeypatch, captured_logs, env_for) -> None:
    from tests.support import acli, status

    secrets = {"T_CLIENT_SECRET": "oauth-client-secret-xyz", "T_TOKEN": "bearer-token-xyz",
               "T_SIGN": "whsec_" + base64.b64encode(b"signing-secret-xyz-32-bytes-long!").decode()}
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    TokenServer(sink, client_secret="oauth-client-secret-xyz")
    sink.on("/fail", status(401, body="nope"))
    dests = [oauth_dest(sink, path="/fail"),
             {"name": "b", "url": sink.url("/in"), "auth": {"type": "bearer", "token_env": "T_TOKEN"},
              "signing": {"secret_env": "T_SIGN"}}]
    settings = make_settings(destinations=dests, distribution={"max_attempts": 2})
    engine = await start_engine(settings)
    await submit_n(engine, "ext", 2)
    await submit_n(engine, "b", 2)
    await wait_for(lambda: _all(engine, 2))
    await wait_for(lambda: _count(engine, "dead"), what="oauth dest parked")
    out = captured_logs.getvalue()
    issued = ["tok-1-abcdef", "tok-2-abcdef"]
    for value in [*secrets.values(), *issued]:
        assert value not in out
    config = str(Path(env_for["MS07_STATE_DIR"]).parent / "c.yaml")
    # Off the event loop: the engine under test runs on it (ruff ASYNC240).
    await asyncio.to_thread(Path(config).write_text, json.dumps({"destinations": dests}))
    [job] = await submit_n(engine, "b")
    for args in (["destinations", "list", "--json"], ["destinations", "list"], ["status", job]):
        result = await acli(["--config", config, *args], env_for)
        assert result.exit_code == 0, result.output
        for value in [*secrets.values(), *issued]:
            assert value not in result.output
    listing = json.loads((await acli(["--config", config, "destinations", "list", "--json"], env_for)).output)
    assert {d["name"]: d["auth"] for d in listing} == {"ext": "oauth2_client_credentials", "b": "bearer"}
    assert listing[0]["auth_reference"]["client_secret_env"] == "T_CLIENT_SECRET"
    await asyncio.sleep(0)
