"""``ms07 health``: tables, JSON and the exit code of each state."""

from __future__ import annotations

import json
import socket
from typing import Any

from ms07.config import load_settings
from ms07.ops.healthcheck import base_url, fetch_health
from tests.observability.conftest import TOKEN, base
from tests.support import Sink, acli, status, wait_for


def _env(env_for: dict[str, str], engine: Any, token: str | None = TOKEN) -> dict[str, Any]:
    # None unsets the variable for the CLI call (the engine read its token at start).
    return {**env_for, "MS07_HEALTH_URL": base(engine), "MS07_API_TOKEN": token}


async def _exit_code_becomes(args: list[str], env: dict[str, str], code: int) -> Any:
    async def probe() -> Any:
        result = await acli(args, env)
        return result if result.exit_code == code else None

    return await wait_for(probe, timeout=20, interval=0.2, what=f"ms07 {' '.join(args)} exits {code}")


async def test_healthy_table_and_json(api_token, healthy_sink_settings, start_engine, env_for) -> None:
    engine = await start_engine(healthy_sink_settings("a"))
    env = _env(env_for, engine)
    result = await _exit_code_becomes(["health"], env, 0)
    assert f"{base(engine)}/health/ready: healthy" in result.output
    for check in ("database", "redis", "queue", "workers", "destinations"):
        assert check in result.output
    result = await acli(["health", "--json"], env)
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["status"] == "healthy" and data["http_status"] == 200 and data["endpoint"] == "ready"
    assert data["report"]["checks"]["database"] == "healthy"


async def test_detailed_table(api_token, healthy_sink_settings, start_engine, env_for) -> None:
    engine = await start_engine(healthy_sink_settings("a"))
    result = await _exit_code_becomes(["health", "--detailed"], _env(env_for, engine), 0)
    for title in ("checks", "connection pools", "queues (DLQ: 0)", "destinations", "workers (heartbeats)"):
        assert title in result.output
    assert engine.worker_id in result.output and "postgresql" in result.output and "http a" in result.output


async def test_degraded_exits_1(api_token, make_settings, sink: Sink, start_engine, env_for) -> None:
    sink.on("/b/health", status(503))
    engine = await start_engine(make_settings(destinations=[
        {"name": "a", "url": sink.url("/a")},
        {"name": "b", "url": sink.url("/b"), "health_url": sink.url("/b/health")}]))
    result = await _exit_code_becomes(["health", "--url", base(engine)], _env(env_for, engine), 1)
    assert "degraded" in result.output


async def test_unhealthy_exits_2(api_token, healthy_sink_settings, start_engine, env_for) -> None:
    engine = await start_engine(healthy_sink_settings("a"))
    engine.request_stop("test")
    result = await acli(["health"], _env(env_for, engine))
    assert result.exit_code == 2, result.output
    assert "unhealthy" in result.output and "draining" in result.output


async def test_unreachable_exits_3(env_for) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the call: nothing listens there
    result = await acli(["health", "--url", f"http://127.0.0.1:{port}"], env_for)
    assert result.exit_code == 3
    assert "unreachable" in result.output
    result = await acli(["health", "--json", "--url", f"http://127.0.0.1:{port}"], env_for)
    assert result.exit_code == 3 and json.loads(result.output)["status"] == "unreachable"


async def test_wrong_or_missing_token_exits_3(api_token, healthy_sink_settings, start_engine, env_for) -> None:
    engine = await start_engine(healthy_sink_settings("a"))
    for token in ("wrong-token", None):
        result = await acli(["health", "--json"], _env(env_for, engine, token))
        assert result.exit_code == 3, result.output
        data = json.loads(result.output)
        assert data["status"] == "unauthorized" and data["http_status"] == 401
        assert "MS07_API_TOKEN" in data["error"]


async def test_not_an_engine(sink: Sink) -> None:
    result = await fetch_health(sink.url(""), None, detailed=True)
    assert result["status"] == "invalid" and result["http_status"] == 200
    assert result["url"] == sink.url("/health/detailed")


def test_base_url_resolution(tmp_path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("service: {http_port: 9123}\n")
    settings = load_settings(config, environ={})
    assert base_url(settings) == "http://127.0.0.1:9123"
    assert base_url(load_settings(config, environ={"MS07_HEALTH_URL": "https://ms07.example/"})) == \
        "https://ms07.example"
    assert base_url(settings, "http://other:1/") == "http://other:1"
