"""Smoke tests of the guide's five problems (docs/architecture.md): the problem is made for real; a dry run must
describe it (and change nothing); a real run that cannot fix it must stop at the failing
verification with the next command and whom to escalate to."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from ms07.ops.submit import submit
from tests.runbooks.conftest import DEST, closed_port, explain
from tests.runbooks.test_loader import GOOD
from tests.support import acli, destination, status, wait_for


async def _submit(env: Any, n: int) -> None:
    engine = next(iter(env.engines.values()))
    async with engine.runtime.connection() as conn:
        for i in range(n):
            await submit(conn, engine.queue, env.engine_settings, [DEST], {"n": i})


def _attempts(env: Any, where: str = "true") -> int:
    return int(env.sql(f"SELECT count(*) FROM distribution_attempts WHERE {where}")[0][0])


def _nothing_written(env: Any) -> None:
    assert env.audit() == [] and not env.audit_file().exists()
    assert env.fake.mutations() == []


async def test_timeouts_closed_port_is_described(live: Any) -> None:
    port = closed_port()
    env = await live(
        destinations=[
            destination(
                DEST, f"http://127.0.0.1:{port}/in", health_url=f"http://127.0.0.1:{port}/health"
            )
        ]
    )
    result = await env.run("timeouts", dry_run=True)
    assert result.status == "dry-run", explain(result)
    first = " ".join(result.steps[0].lines)
    assert "CRITICAL timeouts.probe_unreachable" in first and f"{DEST}: TCP" in first
    assert result.steps[0].next_command == "ms07 destinations check"
    verify = result.steps[-1]
    assert verify.state == "unmet" and "timeouts.probe_unreachable" in verify.message
    _nothing_written(env)


async def test_timeouts_real_run_stops_at_verification_and_escalates(
    live: Any, tmp_path: Path, env_for: dict[str, str]
) -> None:
    """Through the CLI: the verdict of each step, then what to do and whom to call."""
    port = closed_port()
    dests = [
        destination(
            DEST, f"http://127.0.0.1:{port}/in", health_url=f"http://127.0.0.1:{port}/health"
        )
    ]
    env = await live(destinations=dests)
    config = tmp_path / "cli.yaml"
    config.write_text(yaml.safe_dump({"destinations": dests, "k8s_namespace": "ms07"}))
    cli_env = {**env_for, "MS07_CONFIG": str(config), "MS07_HEALTH_URL": env.settings.health_url}

    result = await acli(["runbook", "run", "timeouts", "--yes"], cli_env)
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    assert "[1/5] diagnose: Stuck jobs" in out and "FOUND critical" in out and "PASSED critical" not in out
    assert "CRITICAL timeouts.probe_unreachable" in out
    assert "SKIPPED when: finding('queue.dead_consumers') is false" in out
    assert (
        "FAILED step 5 (Every destination answers its probe and no job is stuck) failed: expect:"
        in out
    )
    assert "next: ms07 destinations check" in out
    assert "what to do: TCP refused" in out
    assert "escalate: P2 (respond within 1 hour): sre (sre@zenia.it)" in out
    rows = env.audit()
    assert rows[-1]["outcome"] == "failed" and rows[-1]["detail"]["escalation"].endswith(
        "(sre@zenia.it)"
    )
    assert rows[-1]["detail"]["next_command"] == "ms07 destinations check"

    as_json = await acli(["runbook", "run", "timeouts", "--dry-run", "--json"], cli_env)
    assert as_json.exit_code == 1, as_json.output  # a dry run that found a problem is no all-clear
    data = json.loads(as_json.stdout)
    assert data["status"] == "dry-run" and data["escalation"]["team"] == "sre"
    assert data["steps"][0]["data"]["check"] == "timeouts"


async def test_auth_failures_are_described_without_the_secret(
    live: Any, sink: Any, monkeypatch: Any
) -> None:
    token = "s3cr3t-token-value-0123456789"
    monkeypatch.setenv("MS09_TOKEN", token)
    sink.on("/in", status(401, body="invalid token")).on("/health", status(401))
    env = await live(
        destinations=[
            destination(
                DEST,
                sink.url("/in"),
                health_url=sink.url("/health"),
                auth={"type": "bearer", "token_env": "MS09_TOKEN"},
            )
        ]
    )
    await _submit(env, 3)
    await wait_for(lambda: _attempts(env, "response_status_code = 401") >= 3, what="401 attempts")

    result = await env.run("auth-failures", dry_run=True)

    assert result.status == "dry-run", explain(result)
    by = {s.index: s for s in result.steps}
    assert f"auth.failures: {DEST}:" in " ".join(by[1].lines) and "401" in " ".join(by[1].lines)
    assert "CRITICAL auth.probe_rejected" in " ".join(by[2].lines)
    assert by[4].state == "unmet" and "auth.probe_rejected" in by[4].message
    assert token not in json.dumps(result.to_dict(), default=str)
    _nothing_written(env)


async def test_high_latency_is_described(live: Any) -> None:
    env = await live()

    async def slow(request: web.Request, n: int) -> web.StreamResponse:
        await asyncio.sleep(0.6)
        return web.Response(text="ok")

    env.sink.on("/in", slow)
    await _submit(env, 6)
    await wait_for(lambda: _attempts(env, "status = 'success'") >= 6, what="slow deliveries")

    result = await env.run("high-latency", dry_run=True)

    assert result.status == "dry-run", explain(result)
    by = {s.index: s for s in result.steps}
    assert f"WARNING latency.p95_high: {DEST}: p95" in " ".join(by[1].lines)
    assert by[3].state == "skipped"  # no backlog: more workers would not help
    assert by[4].state == "unmet" and "latency.p95_high" in by[4].message
    _nothing_written(env)


async def test_memory_leak_is_described(live: Any) -> None:
    env = await live()
    mib = 1024 * 1024
    worker = "ms07-distributor-leaky-7-abcdef"
    env.sql(
        "INSERT INTO worker_heartbeats (worker_id, host, pid, started_at, updated_at, status, "
        "rss_bytes, "
        "version) VALUES (%s, 'node-1', 7, now() - interval '2 hours', now(), 'active', %s, 'x')",
        (worker, 300 * mib),
    )
    env.sql(
        "INSERT INTO worker_heartbeat_samples (worker_id, sampled_at, rss_bytes) "
        "SELECT %s, now() - make_interval(secs => (40 - i) * 60), (200 + i * 2.5)::bigint * %s "
        "FROM generate_series(1, 40) i",
        (worker, mib),
    )
    oom = env.fake.pod_names()[1]
    env.fake.crash(oom, reason="OOMKilled", exit_code=137, restarts=2)

    result = await env.run("memory-leak", dry_run=True)

    assert result.status == "dry-run", explain(result)
    by = {s.index: s for s in result.steps}
    found = " ".join(by[1].lines)
    assert f"WARNING memory.rss_growth: {worker}: RSS grew" in found
    assert f"CRITICAL memory.oom_killed: pod {oom} was OOMKilled" in found
    assert by[2].state == "passed" and by[2].command == "ms07 diagnose health"
    assert by[3].verdict == "dry-run" and f"to replace: {oom}" in " ".join(by[3].lines)
    assert by[4].state == "unmet"
    _nothing_written(env)


async def test_a_dependency_out_of_reach_fails_the_step_in_one_line(
    make_settings: Any, tmp_path: Path
) -> None:
    from ms07 import runbooks

    book = tmp_path / "redis-gone.yaml"
    book.write_text(
        GOOD.replace("id: sample", "id: redis-gone").replace(
            "  - run: ms07 diagnose queue\n    expect: not finding('queue.dead_consumers')\n",
            "  - run: ms07 queue stats\n",
        )
    )
    settings = make_settings().with_overrides(redis_url=f"redis://127.0.0.1:{closed_port()}/0")
    result = await runbooks.run(runbooks.load(book), settings, yes=True)
    assert result.status == "failed" and result.failed_step == 3, explain(result)
    first, _, last = result.steps
    assert (
        first.state == "unchecked" and first.status == "unknown"
    )  # diagnose says what it could not see
    assert "queue.redis_unavailable" in " ".join(first.lines)
    assert last.state == "failed" and last.verdict == "error" and "\n" not in last.message
    assert "Connection" in last.message or "connect" in last.message
