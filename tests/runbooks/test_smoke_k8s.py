"""Smoke tests of the Kubernetes recovery runbooks: worker-crash and db-connection-loss,
with engines tied to the fake API's pods."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from psycopg.conninfo import conninfo_to_dict

from tests.runbooks.conftest import explain
from tests.support import wait_for

CRASH_LOG = (
    json.dumps(
        {
            "timestamp": "2024-01-15T10:05:00Z",
            "level": "ERROR",
            "component": "memory",
            "message": "memory threshold exceeded",
        }
    )
    + "\nfatal: runtime: out of memory\n"
)


async def test_worker_crash_replaces_the_crashed_pod(live: Any) -> None:
    env = await live()
    healthy, crashed = env.fake.pod_names()
    env.fake.crash(crashed, reason="OOMKilled", exit_code=137, restarts=4, previous_logs=CRASH_LOG)

    result = await env.run("worker-crash", yes=True)

    assert result.status == "completed", explain(result)
    by = {s.index: s for s in result.steps}
    assert "memory.oom_killed" in " ".join(by[2].lines) and crashed in " ".join(by[2].lines)
    plan = " ".join(by[3].lines)
    assert by[3].verdict == "completed" and f"{crashed} -> " in plan and "Ready" in plan
    assert by[4].state == "skipped"  # nobody held entries
    assert by[5].state == "passed" and by[6].state == "passed"
    # The crashed pod is gone, its replacement Ready, the healthy one untouched.
    deletes = [r.path.rsplit("/", 1)[1] for r in env.fake.mutations() if r.method == "DELETE"]
    assert deletes == [crashed]
    pods = env.fake.ready_pods()
    assert (
        len(pods) == 2
        and healthy in pods
        and crashed not in env.fake.pod_names(include_deleting=True)
    )
    logs = by[3].data["steps"][1]["detail"]["logs"][crashed]
    assert "fatal: runtime: out of memory" in logs


async def test_worker_crash_dry_run_only_previews(live: Any) -> None:
    env = await live()
    crashed = env.fake.pod_names()[1]
    env.fake.crash(crashed, reason="Error", exit_code=1, restarts=7)
    result = await env.run("worker-crash", dry_run=True)
    assert result.status == "dry-run", explain(result)
    preview = " ".join(result.steps[2].lines)
    assert result.steps[2].verdict == "dry-run" and f"to replace: {crashed}" in preview
    assert env.fake.mutations() == [] and env.audit() == []


class PgProxy:
    """TCP on loopback -> the test PostgreSQL's Unix socket; ``cut()`` drops every
    connection and refuses new ones (the network path to the database is gone)."""

    def __init__(self, database_url: str) -> None:
        info = conninfo_to_dict(database_url)
        self.socket = f"{info['host']}/.s.PGSQL.{info.get('port') or 5432}"
        self.dbname = str(info.get("dbname"))
        self.user = str(info.get("user") or "postgres")
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.open = True

    async def start(self, port: int = 0) -> PgProxy:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]
        self.open = True
        return self

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.dbname}?connect_timeout=2"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_unix_connection(self.socket)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        self.open = False
        if self.server is not None:
            self.server.close()  # new connections are refused
        for w in self.writers:
            w.close()

    async def stop(self) -> None:
        self.cut()
        if self.server is not None:
            await self.server.wait_closed()


@pytest.fixture
async def pg_proxy(database_url: str) -> AsyncIterator[PgProxy]:
    """Set up before (so torn down after) the engines that connect through it."""
    proxy = await PgProxy(database_url).start()
    try:
        yield proxy
    finally:
        await proxy.stop()


@pytest.mark.loop_errors_ok  # the first engine loses its database on purpose
async def test_db_connection_loss_restarts_the_pods_and_they_reconnect(
    pg_proxy: PgProxy, live: Any
) -> None:
    env = await live(engine=False)
    proxy = pg_proxy
    current: dict[str, Any] = {}
    loop = asyncio.get_running_loop()

    # The engine of the first pod reaches PostgreSQL through a network path that breaks.
    first_pod = env.fake.pod_names()[0]
    old = await env.engine_for(
        first_pod, env.engine_settings.with_overrides(database_url=proxy.url)
    )
    current["engine"] = old
    env.stop_with_pods()

    def ready(pod: str) -> None:  # new pods reach the database directly: they reconnect
        if "replacement" not in current:
            current["replacement"] = asyncio.run_coroutine_threadsafe(env.engine_for(pod), loop)

    env.fake.on_pod_ready = ready

    # A Service in front of the pods: /health goes to the newest Ready engine.
    async def service(request: web.Request, n: int) -> web.StreamResponse:
        future = current.get("replacement")
        engine = future.result() if future is not None and future.done() else current["engine"]
        async with httpx.AsyncClient(timeout=5) as client:
            resp = await client.get(
                f"http://127.0.0.1:{engine.http_port}{request.path.removeprefix('/svc')}"
            )
        return web.Response(
            status=resp.status_code, body=resp.content, content_type="application/json"
        )

    env.sink.on("/svc/health/ready", service).on("/svc/health/detailed", service)
    svc = env.sink.url("/svc")
    env.settings = env.settings.with_overrides(health_url=svc)

    async def status() -> int:
        async with httpx.AsyncClient(timeout=5) as client:
            return (await client.get(f"http://127.0.0.1:{old.http_port}/health/ready")).status_code

    assert await status() == 200
    proxy.cut()
    await wait_for(lambda: _is(status, 503), timeout=15, what="the engine to see its database gone")
    try:
        result = await env.run("db-connection-loss", yes=True)
    finally:
        await proxy.start(proxy.port)  # the network heals: the old engine's stop can finish

    assert result.status == "completed", explain(result)
    by = {s.index: s for s in result.steps}
    assert "CRITICAL health.ready: engine unhealthy" in " ".join(by[1].lines)
    assert "database unhealthy" in " ".join(by[1].lines)
    plan = " ".join(by[2].lines)
    assert by[2].verdict == "completed" and "SELECT 1 in" in plan and "as primary" in plan
    # A rollout restart: one patch of the pod template; every pod replaced; healthy again.
    [patch] = env.fake.mutations()
    assert patch.method == "PATCH" and "restartedAt" in json.dumps(patch.body)
    assert first_pod not in env.fake.pod_names(include_deleting=True)
    assert old.draining
    assert by[3].state == "passed" and "health.ready" not in " ".join(by[3].lines)


async def _is(fn: Any, code: int) -> bool:
    return await fn() == code


async def test_without_yes_a_recovery_asks_and_no_stops_the_run(
    live: Any, tmp_path: Any, env_for: dict[str, str]
) -> None:
    """Interactive: the plan is shown and confirmed before it changes anything."""
    import yaml

    from tests.support import acli

    env = await live()
    crashed = env.fake.pod_names()[1]
    env.fake.crash(crashed, reason="OOMKilled", restarts=3)
    config = tmp_path / "cli.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "destinations": [{"name": "ms09-reporter", "url": env.sink.url("/in")}],
                "k8s_namespace": "ms07",
            }
        )
    )
    cli_env = {**env_for, "MS07_CONFIG": str(config), "MS07_HEALTH_URL": env.settings.health_url}

    result = await acli(["runbook", "run", "worker-crash"], cli_env, input="n\n")

    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    assert f"to replace: {crashed}" in out and "Run recover worker-crash? [y/n] (n):" in out
    assert "FAILED step 3" in out and "not confirmed: nothing was done" in out
    assert "next: ms07 recover worker-crash --dry-run" in out
    assert [r for r in env.fake.mutations() if r.method == "DELETE"] == []
    assert env.audit()[-1]["outcome"] == "failed"
