"""Helpers for the diagnose tests: real rows, real Redis state, the CLI, the JSON contract."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from typer.testing import CliRunner, Result

from ms07.cli import app

SEVERITIES = {"info", "warning", "critical"}
STATUSES = {"healthy", "warning", "critical", "unknown"}
FINDING_KEYS = {"id", "severity", "summary", "evidence", "remedy", "command"}

def validate_check(obj: Any) -> None:
    """The `--json` contract of README.md, "Diagnose", for one check."""
    assert isinstance(obj, dict) and set(obj) == {"check", "status", "findings"}, obj
    assert isinstance(obj["check"], str) and obj["status"] in STATUSES
    assert isinstance(obj["findings"], list)
    for f in obj["findings"]:
        assert set(f) == FINDING_KEYS, f
        assert f["severity"] in SEVERITIES
        assert all(isinstance(f[k], str) for k in FINDING_KEYS)
        assert f["id"].startswith(obj["check"] + ".")
        assert not f["command"] or f["command"].startswith("ms07 ")


def validate_all(obj: Any) -> None:
    assert isinstance(obj, dict) and set(obj) == {"status", "checks"}, obj
    assert obj["status"] in STATUSES
    for c in obj["checks"]:
        validate_check(c)


def ids(obj: dict[str, Any]) -> dict[str, str]:
    """finding id -> worst severity among findings with that id."""
    order = ["info", "warning", "critical"]
    out: dict[str, str] = {}
    for f in obj["findings"]:
        if order.index(f["severity"]) >= order.index(out.get(f["id"], "info")):
            out[f["id"]] = f["severity"]
    return out


@pytest.fixture
def config_file(tmp_path: Path) -> Callable[..., Path]:
    """A YAML config for the CLI: ``config_file(destinations=[...], diagnose={...})``."""

    def write(**sections: Any) -> Path:
        data = {"service": {"http_port": 0}, "distribution": {"timeout_seconds": 5, "claim_idle_seconds": 8}}
        data.update(sections)
        path = tmp_path / f"diag-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


@pytest.fixture
def cli(env_for: dict[str, str]) -> Callable[..., Result]:
    """``cli(["diagnose", "queue"], config=path, env={...})`` in-process with CliRunner."""

    def invoke(args: list[str], config: Path | None = None, env: dict[str, str] | None = None) -> Result:
        full = {**env_for, **(env or {})}
        if config is not None:
            full["MS07_CONFIG"] = str(config)
        return CliRunner().invoke(app, args, env=full, catch_exceptions=False)

    return invoke


async def acli(cli: Callable[..., Result], *args: Any, **kwargs: Any) -> Result:
    """The CLI from an async test: in a thread, so this loop keeps serving sinks/engines."""
    return await asyncio.to_thread(cli, *args, **kwargs)


def hold(redis_url: str, consumer: str, n: int = 1, queue: str = "default") -> None:
    """Make ``consumer`` hold ``n`` pending entries of ``queue`` (it read them, never acked)."""
    import redis

    from ms07 import keys

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    stream = keys.stream(queue)
    try:
        r.xgroup_create(stream, keys.GROUP, id="$", mkstream=True)
    except redis.ResponseError:
        pass  # BUSYGROUP: it exists
    for i in range(n):
        r.xadd(stream, {"id": f"00000000-0000-0000-0000-{i:012d}", "destination": "d1"})
    r.xreadgroup(keys.GROUP, consumer, {stream: ">"}, count=n)
    r.close()


def parse(result: Result) -> dict[str, Any]:
    return json.loads(result.stdout)


class Db:
    """Synchronous seeding of a test database."""

    def __init__(self, url: str) -> None:
        self.url = url

    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def job(self, destination: str = "d1", status: str = "queued", *, created_ago: float = 0.0,
            updated_ago: float | None = None, started_ago: float | None = None, priority: str = "default") -> str:
        did = str(uuid.uuid4())
        self.execute(
            """INSERT INTO distribution_jobs (distribution_id, destination_name, status, payload, priority,
                                              created_at, updated_at, started_at)
               VALUES (%s, %s, %s, '\\x7b7d', %s, now() - make_interval(secs => %s),
                       now() - make_interval(secs => %s),
                       CASE WHEN %s::float8 IS NULL THEN NULL ELSE now() - make_interval(secs => %s) END)""",
            (did, destination, status, priority, created_ago,
             created_ago if updated_ago is None else updated_ago, started_ago, started_ago or 0),
        )
        return did

    def attempts(self, destination: str, n: int, *, latency_ms: float = 20.0, status: str = "success",
                 code: int | None = 200, error_code: str | None = None, message: str | None = None,
                 ago: float = 60.0) -> None:
        self.execute(
            """INSERT INTO distribution_attempts (distribution_id, destination_name, attempt, worker_id, status,
                      response_status_code, error_code, error_message, started_at, completed_at)
               SELECT gen_random_uuid(), %s, 1, 'w', %s, %s, %s, %s,
                      now() - make_interval(secs => %s) + make_interval(secs => g * 0.01),
                      now() - make_interval(secs => %s) + make_interval(secs => g * 0.01)
                        + make_interval(secs => %s / 1000.0)
                 FROM generate_series(1, %s) AS g""",
            (destination, status, code, error_code, message, ago, ago, latency_ms, n),
        )


@pytest.fixture
def db(database_url: str) -> Iterator[Db]:
    yield Db(database_url)
