"""``ms07 run`` as a subprocess: every stdout line is a guide-shaped JSON object, and a
run with an API token, a destination bearer token, an OAuth2 client secret and a
database password never prints any of them (logs, ``ms07 health`` output)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from aiohttp import web

from tests.observability.test_logs import parse_lines
from tests.support import EngineProcess, Sink, acli, destination, wait_for, write_config

API_TOKEN = "api-token-4b1f9e2d7c"
BEARER = "dest-bearer-8a7b6c5d4e"
CLIENT_SECRET = "oauth-client-secret-1f2e3d"
ACCESS_TOKEN = "oauth-access-token-9z8y7x"
QUERY_SECRET = "query-key-6h5g4f"
DB_PASSWORD = "db-password-3k2j1h"


def _with_password(url: str) -> tuple[str, str]:
    """The test database URL with a password in it (the embedded server trusts local
    connections, so any password works); an existing password is used as it is."""
    parts = urlsplit(url)
    if parts.password:
        return url, parts.password
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}:{DB_PASSWORD}@{host}")), DB_PASSWORD


async def echo_auth(request: web.Request, n: int) -> web.StreamResponse:
    # A destination that echoes the credentials it refuses: the worst case for logs.
    return web.Response(status=401, text=f"refused {request.headers.get('Authorization')}")


async def token_endpoint(request: web.Request, n: int) -> web.StreamResponse:
    return web.json_response({"access_token": ACCESS_TOKEN, "expires_in": 3600, "token_type": "Bearer"})


def _port(proc: EngineProcess) -> int | None:
    for r in proc.log_lines():
        if r.get("message") == "HTTP server listening":
            return int(r["metadata"]["port"])
    return None


async def test_a_run_with_secrets_prints_none_of_them(tmp_path: Path, sink: Sink, env_for: dict[str, str]) -> None:
    sink.on("/echo", echo_auth).on("/token", token_endpoint)
    db_url, db_password = _with_password(env_for["MS07_DATABASE_URL"])
    secrets = [API_TOKEN, BEARER, CLIENT_SECRET, ACCESS_TOKEN, QUERY_SECRET, db_password]
    config = write_config(tmp_path / "engine.yaml", {
        "distribution": {"max_attempts": 2, "retry_base_delay_seconds": 0.05, "max_retry_delay": 0.1,
                         "scheduler_interval_seconds": 0.05},
        "service": {"heartbeat_interval_seconds": 1, "health_check_interval_seconds": 1},
        "destinations": [
            destination("echo", sink.url("/echo"), auth={"type": "bearer", "token_env": "OBS_BEARER"},
                        health_url=sink.url(f"/health?api_key={QUERY_SECRET}")),
            destination("o", sink.url(f"/o?api_key={QUERY_SECRET}"),
                        auth={"type": "oauth2_client_credentials", "token_url": sink.url("/token"),
                              "client_id": "ms07", "client_secret_env": "OBS_CLIENT_SECRET"}),
        ],
    })
    env = {**env_for, "MS07_DATABASE_URL": db_url, "MS07_API_TOKEN": API_TOKEN, "MS07_LOG_LEVEL": "DEBUG",
           "OBS_BEARER": BEARER, "OBS_CLIENT_SECRET": CLIENT_SECRET}
    proc = EngineProcess(config, env, tmp_path / "engine.log").start()
    outputs: list[str] = []
    try:
        port = await wait_for(lambda: _port(proc), timeout=30, what="engine listening")
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(timeout=10) as http:
            resp = await http.post(f"{url}/api/v1/distributions", headers={"Authorization": f"Bearer {API_TOKEN}"},
                                   json={"destinations": ["echo", "o"], "payload": {"x": 1}})
            assert resp.status_code == 202, resp.text
            outputs.append(resp.text)
            refused = await http.get(f"{url}/health/ready", headers={"Authorization": "Bearer not-the-token"})
            assert refused.status_code == 401
            outputs.append(refused.text)

            def parked() -> bool:
                return any(r.get("message") == "distribution parked in the DLQ" for r in proc.log_lines())

            await wait_for(parked, timeout=30, what="echo parked")
            await wait_for(lambda: any(r.get("message") == "OAuth2 token refreshed" for r in proc.log_lines()),
                           what="oauth2 token fetched")
            detailed = await http.get(f"{url}/health/detailed", headers={"Authorization": f"Bearer {API_TOKEN}"})
            outputs.append(detailed.text)
        cli_env = {**env, "MS07_CONFIG": str(config)}
        for args in (["health", "--url", url], ["health", "--detailed", "--url", url],
                     ["health", "--detailed", "--json", "--url", url]):
            result = await acli(args, cli_env)
            assert result.exit_code in (0, 1), result.output
            outputs.append(result.output)
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, 20) == 0
    finally:
        proc.kill()

    text = proc.log.read_text()
    records = parse_lines(text)  # every line of the run is JSON with the guide's fields (ms07/logs.py)
    assert any(r["message"] == "engine started" for r in records)
    warned = [r for r in records if r["message"] == "delivery attempt failed"]
    assert warned and warned[0]["error_code"] == "AUTHENTICATION_FAILED"
    assert warned[0]["metadata"]["last_error"] == "HTTP 401: refused Bearer ***"
    for secret in secrets:
        assert secret not in text, f"{secret} in the engine's logs"
        for out in outputs:
            assert secret not in out, f"{secret} in {out[:300]}"
    assert json.loads(outputs[-1])["report"]["destinations"]


async def test_console_log_format(tmp_path: Path, sink: Sink, env_for: dict[str, str]) -> None:
    config = write_config(tmp_path / "engine.yaml", {"destinations": [destination("a", sink.url("/a"))]})
    proc = EngineProcess(config, env_for, tmp_path / "engine.log", {"MS07_LOG_FORMAT": "console"}).start()
    try:
        await wait_for(lambda: "engine started" in proc.log.read_text(), timeout=30, what="engine started")
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, 20) == 0
    finally:
        proc.kill()
    lines = proc.log.read_text().splitlines()
    started = next(line for line in lines if "engine started" in line)
    assert " INFO " in started and "DistributionWorker" in started and "worker_id=" in started
    with pytest.raises(json.JSONDecodeError):
        json.loads(started)
