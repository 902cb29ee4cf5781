"""Fixtures of the recover tests: the fake Kubernetes API, a kubeconfig for the real
client, the CLI environment, and helpers that seed and snapshot Redis."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis as redis_sync
from typer.testing import CliRunner

from ms07 import keys
from tests.k8s_fake import FakeKube


@pytest.fixture
def recover_env(env_for: dict[str, str], fake_kube: FakeKube) -> dict[str, str]:
    return {
        **env_for,
        "KUBECONFIG": str(fake_kube.kubeconfig_path),  # type: ignore[attr-defined]
        "MS07_K8S_NAMESPACE": "ms07",
        "USER": "oncall-tester",
    }


@pytest.fixture
def cli(recover_env: dict[str, str]) -> Callable[..., Any]:
    """``cli("recover", "queue-full", "--yes")`` -> click Result (exit_code, output)."""
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Any:
        from ms07.cli import app

        return runner.invoke(app, list(args), env={**recover_env, **(env or {})}, input=input)

    return invoke


def seed(
    rc: redis_sync.Redis,
    n: int,
    *,
    queue: str = "default",
    delayed: int = 0,
    pending_for: str | None = None,
    pending: int = 0,
) -> list[str]:
    """XADD n entries (like the engine's), ZADD delayed retries, and optionally let a consumer
    read ``pending`` of them so they sit in its PEL. Returns the distribution ids."""
    stream = keys.stream(queue)
    try:
        rc.xgroup_create(stream, keys.GROUP, id="0", mkstream=True)
    except redis_sync.ResponseError:
        pass
    ids = [str(uuid.uuid4()) for _ in range(n)]
    for did in ids:
        rc.xadd(stream, {"id": did, "destination": "ms09-reporter"})
    for _ in range(delayed):
        rc.zadd(keys.delayed(queue), {str(uuid.uuid4()): time.time() + 3600})
    if pending_for and pending:
        rc.xreadgroup(keys.GROUP, pending_for, {stream: ">"}, count=pending)
    return ids


def snapshot(rc: redis_sync.Redis) -> dict[str, Any]:
    """Every key with its type and full content (stream entries, PEL, consumers)."""
    out: dict[str, Any] = {}
    for key in sorted(rc.scan_iter("*")):
        kind = rc.type(key)
        if kind == "stream":
            groups = rc.xinfo_groups(key)
            out[key] = {
                "entries": rc.xrange(key),
                "groups": [
                    {
                        **{k: v for k, v in g.items() if k not in ("lag",)},
                        "pel": [
                            (p["message_id"], p["consumer"])
                            for p in rc.xpending_range(key, g["name"], "-", "+", 10000)
                        ],
                        "consumers": sorted(
                            (c["name"], c["pending"]) for c in rc.xinfo_consumers(key, g["name"])
                        ),
                    }
                    for g in groups
                ],
            }
        elif kind == "zset":
            out[key] = rc.zrange(key, 0, -1, withscores=True)
        elif kind == "string":
            out[key] = rc.get(key)
        elif kind == "hash":
            out[key] = rc.hgetall(key)
        else:
            out[key] = kind
    return out


def audit_rows(database_url: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url) as conn:
        cur = conn.execute(
            "SELECT operator, plan_id, plan, step_index, step, command, outcome, detail "
            "FROM recovery_audit ORDER BY id"
        )
        cols = [c.name for c in cur.description or []]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def audit_lines(state_dir: Path) -> list[dict[str, Any]]:
    path = state_dir / "audit" / "recovery.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]
