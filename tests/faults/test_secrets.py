"""Known secrets never come out: an engine process at DEBUG with a bearer token, an API key,
a basic password, OAuth2 client credentials (and the token it is issued), a signing secret,
the API token and a PostgreSQL URL with a password; destinations that echo what they were
sent in their error bodies. None of the secrets may appear in the engine's logs, in any
CLI output, in recovery_audit, in /health/* or /metrics, or in what Postgres stores about
attempts (which `ms07 status` prints)."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import psycopg
import pytest
from aiohttp import web

from tests.faults.harness import engine_config, exit_code
from tests.support import EngineProcess, Sink, acli, wait_for

pytestmark = pytest.mark.faults


def _secret(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


API_TOKEN = _secret("api-token")
BEARER = _secret("bearer-token")
API_KEY = _secret("api-key")
BASIC_PW = _secret("basic-password")
CLIENT_SECRET = _secret("client-secret")
ACCESS_TOKEN = _secret("issued-access-token")
SIGNING = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
DB_PASSWORD = _secret("Pg-Pa55")
REDIS_PASSWORD = _secret("redis-pw")


def every_secret() -> dict[str, str]:
    basic = base64.b64encode(f"reporter:{BASIC_PW}".encode()).decode()
    client_basic = base64.b64encode(f"ms07:{CLIENT_SECRET}".encode()).decode()
    return {"api token": API_TOKEN, "bearer token": BEARER, "api key": API_KEY, "basic password": BASIC_PW,
            "basic credentials": basic, "client secret": CLIENT_SECRET, "client credentials": client_basic,
            "access token": ACCESS_TOKEN,
            "signing secret": SIGNING, "signing key": SIGNING.removeprefix("whsec_"),
            "database password": DB_PASSWORD, "redis password": REDIS_PASSWORD}


def assert_clean(where: str, text: str) -> None:
    for name, value in every_secret().items():
        assert value not in text, f"the {name} leaked into {where}"
        assert quote(value, safe="") not in text or quote(value, safe="") == value, \
            f"the {name} (URL-encoded) leaked into {where}"


@pytest.fixture
def password_url(servers: Any, database_url: str) -> Iterator[str]:
    """The test database through a role that has a password (and every privilege on it)."""
    role = f"ms07_secret_{secrets.token_hex(4)}"
    name = urlsplit(database_url).path.lstrip("/")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{DB_PASSWORD}'")
        conn.execute(f'GRANT ALL PRIVILEGES ON DATABASE "{name}" TO {role}')
        for grant in ("ALL ON SCHEMA public", "ALL ON ALL TABLES IN SCHEMA public",
                      "ALL ON ALL SEQUENCES IN SCHEMA public"):
            conn.execute(f"GRANT {grant} TO {role}")
    parts = urlsplit(database_url)
    host = parts.netloc.rsplit("@", 1)[-1]
    yield urlunsplit(parts._replace(netloc=f"{role}:{DB_PASSWORD}@{host}"))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"DROP OWNED BY {role}")
    with psycopg.connect(servers.admin_url, autocommit=True) as conn:
        conn.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
        conn.execute(f"DROP ROLE IF EXISTS {role}")


def echo(status: int) -> Any:
    """A receiver that fails the first try of each request path with ``status``, quoting
    every header it was sent (a hostile or careless receiver), then accepts."""
    tried: set[str] = set()

    async def respond(request: web.Request, n: int) -> web.StreamResponse:
        body = await request.read()
        if request.path not in tried:
            tried.add(request.path)
            return web.Response(status=status, text=f"rejected {dict(request.headers)} body={body[:200]!r}")
        return web.Response(text="ok")

    return respond


def token_endpoint() -> Any:
    calls = {"n": 0}

    async def respond(request: web.Request, n: int) -> web.StreamResponse:
        calls["n"] += 1
        form = dict(await request.post())
        if calls["n"] == 1:  # a token endpoint that quotes the credentials it refuses
            return web.Response(status=400, text=f"invalid_client {request.headers.get('Authorization')} {form}")
        return web.json_response({"access_token": ACCESS_TOKEN, "token_type": "Bearer", "expires_in": 3600})

    return respond


async def test_no_secret_leaks_anywhere(tmp_path: Path, sink: Sink, servers: Any, password_url: str, redis_url: str,
                                        env_for: dict[str, str]) -> None:
    for path, code in (("/bearer", 401), ("/apikey", 403), ("/basic", 401), ("/oauth", 401), ("/signed", 500)):
        sink.on(path, echo(code))
    sink.on("/token", token_endpoint())
    dests = [
        {"name": "bearer", "url": sink.url("/bearer"), "auth": {"type": "bearer", "token_env": "T_BEARER"}},
        {"name": "apikey", "url": sink.url("/apikey"),
         "auth": {"type": "api_key", "header": "X-API-Key", "value_env": "T_API_KEY"}},
        {"name": "basic", "url": sink.url("/basic"),
         "auth": {"type": "basic", "username": "reporter", "password_env": "T_BASIC"}},
        {"name": "oauth", "url": sink.url("/oauth"), "health_url": sink.url("/oauth-health"),
         "auth": {"type": "oauth2_client_credentials", "token_url": sink.url("/token"), "client_id": "ms07",
                  "client_secret_env": "T_CLIENT_SECRET"}},
        {"name": "signed", "url": sink.url("/signed"), "signing": {"secret_env": "T_SIGNING"}},
    ]
    config = engine_config(tmp_path, dests, max_attempts=5)
    env = {**env_for, "MS07_DATABASE_URL": password_url, "MS07_LOG_LEVEL": "DEBUG", "MS07_API_TOKEN": API_TOKEN,
           "T_BEARER": BEARER, "T_API_KEY": API_KEY, "T_BASIC": BASIC_PW, "T_CLIENT_SECRET": CLIENT_SECRET,
           "T_SIGNING": SIGNING, "MS07_CONFIG": str(config)}
    proc = EngineProcess(config, env, tmp_path / "engine.log").start()
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    try:
        await wait_for(proc.started, timeout=30, what="engine started")
        [port] = [r["metadata"]["http_port"] for r in proc.log_lines() if r.get("message") == "engine started"]
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            ids = []
            for d in dests:
                r = await http.post("/api/v1/distributions", headers=auth,
                                    json={"destinations": [d["name"]], "payload": {"for": d["name"]}})
                assert r.status_code == 202, r.text
                ids.append(r.json()["distributions"][0]["distribution_id"])
            assert (await http.get("/health/ready", headers={"Authorization": "Bearer wrong"})).status_code == 401

            async def delivered() -> bool:
                states = [(await http.get(f"/api/v1/distributions/{i}", headers=auth)).json()["status"] for i in ids]
                return all(s == "delivered" for s in states)

            await wait_for(delivered, timeout=30, what="every destination delivered after its refusal")
            outputs = {path: (await http.get(path, headers=auth)).text
                       for path in ("/health/ready", "/health/detailed", "/health/live", "/metrics")}
            outputs.update({f"GET /api/v1/distributions/{i}": (await http.get(f"/api/v1/distributions/{i}",
                                                                              headers=auth)).text for i in ids})
    finally:
        proc.terminate()
        rc = await exit_code(proc)
        proc.kill()
    assert rc == 0
    # The destinations did echo the secrets: the test would prove nothing otherwise.
    received = " ".join(str(r.headers) for r in sink.received)
    assert BEARER in received and ACCESS_TOKEN in received and API_KEY in received
    for where, text in outputs.items():
        assert_clean(where, text)
    log = proc.log.read_text()
    assert '"level": "DEBUG"' in log  # it really ran at DEBUG
    assert_clean("the engine's log", log)

    cli_env = env
    commands = [["status", ids[0]], ["status", ids[3], "--json"], ["queue", "stats", "--json"], ["queue", "stats"],
                ["dlq", "list", "--json"], ["destinations", "list", "--json"], ["destinations", "list"],
                ["db", "status"], ["submit", "-d", "bearer", "--data", '{"again": 1}', "--json"],
                ["--log-level", "DEBUG", "destinations", "check", "oauth", "--json"]]
    audited = "requeue-from-db" in (await acli(["recover", "--help"], cli_env)).output
    if audited:  # a recover plan writes recovery_audit rows: they are scanned below
        commands.append(["recover", "requeue-from-db", "--yes"])
    for args in commands:
        result = await acli(args, cli_env)
        assert_clean(f"ms07 {' '.join(args)}", result.output)
    # Unreachable servers: the error names the URL, never its password.
    broken = {**cli_env, "MS07_DATABASE_URL": f"postgresql://ms07:{DB_PASSWORD}@127.0.0.1:1/ms07",
              "MS07_REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:1/0"}
    for args in (["queue", "stats"], ["db", "status"], ["status", ids[0]]):
        result = await acli(args, broken)
        assert result.exit_code != 0 and "***" in result.output, result.output
        assert_clean(f"ms07 {' '.join(args)} (servers unreachable)", result.output)

    async with await psycopg.AsyncConnection.connect(password_url) as conn:
        if audited:
            cur = await conn.execute("SELECT count(*) FROM recovery_audit")
            assert (await cur.fetchone())[0] > 0, "the recover plan wrote no audit row: nothing was scanned"
        for table in ("recovery_audit", "distribution_attempts", "distribution_jobs", "destinations",
                      "worker_heartbeats"):
            cur = await conn.execute(f"SELECT coalesce(json_agg(t)::text, '') FROM {table} t")  # noqa: S608
            assert_clean(f"the {table} table", (await cur.fetchone())[0])

