"""The Deployment's probes against a real engine (real PostgreSQL, Redis, HTTP server):
the liveness path answers without a token, and the readiness command the kubelet runs
passes on a ready engine and fails on a draining one or with the wrong token."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from ms07.config import Settings
from ms07.engine.engine import Engine
from tests.deploy.support import BASE, load_docs

TOKEN = "probe-test-token-0123456789"


def _container() -> dict[str, Any]:
    deployment = next(d for d in load_docs(BASE / "deployment.yaml") if d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


@pytest.fixture
async def engine(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Engine]:
    monkeypatch.setenv("MS07_API_TOKEN", TOKEN)
    engine = Engine(make_settings())
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop(grace=1)


async def _readiness(port: int, token: str) -> tuple[int, str]:
    """Run the readiness probe's command as the kubelet would, on the engine's port."""
    command = _container()["readinessProbe"]["exec"]["command"]
    assert command[:2] == ["python", "-c"]
    script = command[2].replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    assert script != command[2]
    env = {**os.environ, "MS07_API_TOKEN": token}
    # Asynchronously: the engine serves from this very event loop.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_liveness_is_open_and_readiness_needs_the_token(engine: Engine) -> None:
    container = _container()
    live = container["livenessProbe"]["httpGet"]["path"]
    ready = "/health/ready"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{engine.http_port}") as client:
        assert (await client.get(live)).status_code == 200
        # Why the readiness probe is an exec: an httpGet probe would get this 401.
        assert (await client.get(ready)).status_code == 401
        ok = await client.get(ready, headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200, ok.text


async def test_the_readiness_command_passes_on_a_ready_engine(engine: Engine) -> None:
    code, err = await _readiness(engine.http_port, TOKEN)
    assert code == 0, err


async def test_the_readiness_command_fails_with_a_wrong_token(engine: Engine) -> None:
    code, err = await _readiness(engine.http_port, "not-the-token")
    assert code != 0
    assert "401" in err


async def test_the_readiness_command_fails_while_draining(engine: Engine) -> None:
    engine.request_stop("test: SIGTERM")
    code, err = await _readiness(engine.http_port, TOKEN)
    assert code != 0
    assert "503" in err
