"""A live environment for the runbook smoke tests: the test PostgreSQL and Redis, an engine
(start_engine), loopback destinations (sink), the fake Kubernetes API with the real client,
and engines tied to the fake pods (a deleted pod stops its engine; a new Ready pod can
start one), so that recovery procedures act on something real."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis as redis_sync

from ms07 import runbooks
from ms07.config import Settings
from ms07.engine.engine import Engine
from tests.deploy.support import ROOT
from tests.k8s_fake import FakeKube
from tests.support import Sink, destination

DEST = "ms09-reporter"


@pytest.fixture(autouse=True)
def _runbook_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MS07_RUNBOOKS_DIR", str(ROOT / "runbooks"))
    monkeypatch.setenv("USER", "oncall-tester")
    monkeypatch.delenv("MS07_API_TOKEN", raising=False)


def explain(result: runbooks.RunbookRun) -> str:
    """A run in a few lines, for assertion messages."""
    out = [f"{result.status}: {result.message}"]
    for s in result.steps:
        out.append(f"  {s.index} {s.state} {s.verdict} {s.message}")
        out += [f"      {line}" for line in s.lines[:12]]
    return "\n".join(out)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Live:
    """One smoke test's world. ``settings`` is what the on-call engineer's ms07 sees."""

    settings: Settings
    engine_settings: Settings
    sink: Sink
    fake: FakeKube
    rc: redis_sync.Redis
    database_url: str
    state_dir: Path
    start: Callable[..., Awaitable[Engine]]
    engines: dict[str, Engine] = field(default_factory=dict)  # pod name -> its engine
    loop: asyncio.AbstractEventLoop | None = None

    async def run(self, name: str, **kwargs: Any) -> runbooks.RunbookRun:
        return await runbooks.run(runbooks.load(name), self.settings, **kwargs)

    async def engine_for(self, pod: str, settings: Settings | None = None, **kwargs: Any) -> Engine:
        engine = await self.start(settings or self.engine_settings, worker_id=pod, **kwargs)
        self.engines[pod] = engine
        return engine

    def stop_with_pods(self) -> None:
        """A pod that goes away stops its engine (as Kubernetes' SIGTERM would)."""
        loop = asyncio.get_running_loop()

        def gone(pod: str) -> None:
            engine = self.engines.get(pod)
            if engine is not None:
                asyncio.run_coroutine_threadsafe(engine.stop(), loop)

        self.fake.on_pod_gone = gone

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def job(self, status: str = "queued", ago: float = 600.0) -> str:
        """A job row as the engine writes it, last touched ``ago`` seconds ago."""
        did = str(uuid.uuid4())
        self.sql(
            """INSERT INTO distribution_jobs (distribution_id, destination_name, status, payload,
                                              priority, created_at, updated_at)
               VALUES (%s, %s, %s, '\\x7b7d', 'default', now() - make_interval(secs => %s),
                       now() - make_interval(secs => %s))""",
            (did, DEST, status, ago, ago),
        )
        return did

    def audit(self) -> list[dict[str, Any]]:
        with psycopg.connect(self.database_url) as conn:
            cur = conn.execute(
                "SELECT operator, plan_id, plan, step_index, step, command, outcome, detail "
                "FROM recovery_audit ORDER BY id"
            )
            cols = [c.name for c in cur.description or []]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def audit_file(self) -> Path:
        return self.state_dir / "audit" / "recovery.jsonl"

    def delivered_ids(self) -> set[str]:
        return self.sink.unique_keys("/in")


@pytest.fixture
def live(
    make_settings: Callable[..., Settings],
    sink: Sink,
    fake_kube: FakeKube,
    rc: redis_sync.Redis,
    database_url: str,
    tmp_path: Path,
    start_engine: Callable[..., Any],
) -> Callable[..., Awaitable[Live]]:
    """``await live(engine=True, destinations=[...], **sections)``: settings for the
    destinations (default: one on the sink), an engine running as the fake's first pod,
    and ``settings.health_url`` pointing at it."""

    async def make(
        *, engine: bool = True, destinations: list[dict[str, Any]] | None = None, **sections: Any
    ) -> Live:
        dests = destinations or [destination(DEST, sink.url("/in"), health_url=sink.url("/health"))]
        base = {
            "distribution": {
                "claim_idle_seconds": 12,
                "reconcile_interval_seconds": 3600,
                "reconcile_after_seconds": 3600,
            },
            "service": {"drain_grace_seconds": 0.5, "health_check_interval_seconds": 3600},
            "k8s_namespace": "ms07",
        }
        for key, value in sections.items():
            base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value
        settings = make_settings(destinations=dests, **base)
        env = Live(
            settings, settings, sink, fake_kube, rc, database_url, tmp_path / "state", start_engine
        )
        if engine:
            first = await env.engine_for(fake_kube.pod_names()[0])
            env.settings = settings.with_overrides(health_url=f"http://127.0.0.1:{first.http_port}")
        return env

    return make
