"""The plan machinery through real procedures: a failing step, resuming, Ctrl-C, API errors."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync

from ms07 import keys, recover
from ms07.errors import UsageError
from ms07.recover import plan as P
from ms07.recover import queue_full
from tests.k8s_fake import FakeKube
from tests.recover.conftest import audit_lines, audit_rows, seed

SCALE = "/apis/apps/v1/namespaces/ms07/deployments/ms07-distributor/scale"
DENIED = (
    "kubernetes: permission denied to patch deployments/scale in namespace ms07: the Role needs "
    "verb 'patch' on resource 'deployments/scale' in apiGroup 'apps'"
)


def test_failed_step_stops_the_plan_and_the_printed_command_resumes_it(
    cli: Any, fake_kube: FakeKube, rc: redis_sync.Redis, database_url: str, tmp_path: Path
) -> None:
    seed(rc, 10, delayed=2)
    # Scaling down works; by the time the plan scales back, the permission has been taken away.
    fake_kube.on_pod_gone = lambda pod: (
        fake_kube.fail("PATCH", "/scale$", 403) if not fake_kube.rules else None
    )

    result = cli("recover", "queue-full", "--yes", "--watch-seconds", "0", "--idle-seconds", "0.2")
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    assert f"step 5 (Scale the deployment back) failed: {DENIED}" in out
    assert '(API: deployments.apps "ms07-distributor" is forbidden: User' in out
    [backup_file] = (tmp_path / "state" / "backups").glob("queue-*.jsonl")
    rows = audit_rows(database_url)
    plan_id = rows[0]["plan_id"]
    resume = (
        f"ms07 recover queue-full --watch-seconds 0 --idle-seconds 0.2 --replicas 2 "
        f"--backup {backup_file} --from-step 5 --plan-id {plan_id}"
    )
    assert resume in out
    assert rc.xlen(keys.stream("default")) == 0, "steps 1-4 ran: the queue was cleared"

    done = [(r["step_index"], r["outcome"]) for r in rows if r["outcome"] != "running"]
    assert done == [
        (None, "started"),
        (1, "ok"),
        (2, "ok"),
        (3, "ok"),
        (4, "ok"),
        (5, "failed"),
        (None, "failed"),
    ]
    failed = next(r for r in rows if r["outcome"] == "failed" and r["step_index"] == 5)
    assert failed["detail"]["error"].startswith(DENIED)
    assert failed["detail"]["resume"] == resume
    assert [(x["step_index"], x["outcome"]) for x in audit_lines(tmp_path / "state")] == [
        (r["step_index"], r["outcome"]) for r in rows
    ]

    first_run = len(rows)
    fake_kube.rules.clear()  # the Role is fixed
    again = cli(*shlex.split(resume)[1:], input="y\n")
    assert again.exit_code == 0, again.output
    assert [(r.method, r.body) for r in fake_kube.mutations() if r.path == SCALE] == [
        ("PATCH", {"spec": {"replicas": 0}}),
        ("PATCH", {"spec": {"replicas": 2}}),
        ("PATCH", {"spec": {"replicas": 2}}),
    ]
    assert len(fake_kube.ready_pods()) == 2
    rows = audit_rows(database_url)
    assert {r["plan_id"] for r in rows} == {plan_id}, (
        "the resumed run continues the same audit trail"
    )
    resumed = [
        (r["step_index"], r["outcome"]) for r in rows[first_run:] if r["outcome"] != "running"
    ]
    assert resumed == [(None, "started"), (5, "ok"), (6, "skipped"), (None, "completed")]
    assert len(list((tmp_path / "state" / "backups").glob("queue-*.jsonl"))) == 1


def test_403_in_a_dry_run_blocks_with_the_missing_permission(cli: Any, fake_kube: FakeKube) -> None:
    fake_kube.fail("GET", "/scale$", 403)
    result = cli("recover", "scale", "--replicas", "3", "--dry-run")
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert (
        "step 1 cannot run: kubernetes: permission denied to get deployments/scale in namespace "
        "ms07: "
        "the Role needs verb 'get' on resource 'deployments/scale' in apiGroup 'apps'"
    ) in out
    assert "Traceback" not in result.output


def test_404_names_the_missing_deployment(cli: Any, fake_kube: FakeKube) -> None:
    result = cli("recover", "scale", "--replicas", "3", "--yes", "--deployment", "nope")
    assert result.exit_code == 1
    assert "kubernetes: deployment ms07/nope not found (404)" in " ".join(result.output.split())
    assert fake_kube.mutations() == []


def test_unreachable_api_and_missing_kubeconfig_are_one_line(cli: Any, tmp_path: Path) -> None:
    dead = FakeKube().start()
    path = dead.kubeconfig(tmp_path / "dead-kubeconfig")
    dead.stop()
    result = cli("recover", "scale", "--replicas", "1", "--dry-run", env={"KUBECONFIG": str(path)})
    assert result.exit_code == 1
    assert "kubernetes: cannot reach the API server at http://127.0.0.1:" in " ".join(
        result.output.split()
    )
    missing = cli(
        "recover",
        "scale",
        "--replicas",
        "1",
        "--dry-run",
        env={"KUBECONFIG": str(tmp_path / "none")},
    )
    assert missing.exit_code == 1
    assert "kubernetes: no usable configuration" in " ".join(missing.output.split())


def test_from_step_beyond_the_plan_is_a_usage_error(cli: Any, fake_kube: FakeKube) -> None:
    result = cli("recover", "scale", "--replicas", "1", "--from-step", "9", "--yes")
    assert result.exit_code == 2
    assert "--from-step: this plan has 2 steps" in result.output


class Recording(P.Reporter):
    def __init__(self) -> None:
        self.second_step = asyncio.Event()
        self.result: P.PlanResult | None = None

    def step_started(self, step: P.StepResult) -> None:
        if step.index == 2:
            self.second_step.set()

    def interrupted(self, result: P.PlanResult) -> None:
        self.result = result


async def test_ctrl_c_records_and_describes_the_state(
    make_settings: Any, fake_kube: FakeKube, redis_url: str, database_url: str
) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    await client.set(keys.heartbeat("a-worker-that-never-stops"), "{}")
    await client.aclose()
    settings = make_settings()
    plan = queue_full.build(settings, queue_full.Options(consumer_timeout=60, watch_seconds=0))
    reporter = Recording()
    async with P.PlanContext(
        settings,
        reporter=reporter,
        kube_options={"kubeconfig": str(fake_kube.kubeconfig_path), "namespace": "ms07"},
    ) as ctx:
        task = asyncio.create_task(P.execute(plan, ctx))
        await asyncio.wait_for(reporter.second_step.wait(), 30)
        task.cancel()  # what asyncio.run does on Ctrl-C
        with pytest.raises(asyncio.CancelledError):
            await task
    result = reporter.result
    assert result is not None and result.status == "interrupted"
    assert result.state[0].startswith(
        "done: step 1, Scale the deployment to 0 replicas: scaled from 2 to 0"
    )
    assert result.state[1] == (
        "interrupted: step 2, Wait until no consumer is active (heartbeats gone, "
        "consumers idle): nothing was changed by this step"
    )
    assert result.state[2:] == [
        f"not done: step {i}, {plan.steps[i - 1].title}" for i in range(3, 7)
    ]
    assert result.resume_command.startswith(
        "ms07 recover queue-full --replicas 2 --from-step 2 --plan-id queue-full-"
    )
    outcomes = [
        (r["step_index"], r["outcome"])
        for r in audit_rows(database_url)
        if r["outcome"] != "running"
    ]
    assert outcomes == [(None, "started"), (1, "ok"), (2, "interrupted"), (None, "interrupted")]


async def test_library_entry_point_refuses_to_ask(make_settings: Any) -> None:
    settings = make_settings()
    with pytest.raises(UsageError, match="pass dry_run=True or yes=True"):
        await recover.run("scale", settings, replicas=3)
    with pytest.raises(UsageError, match="unknown option 'replica'"):
        recover.build("scale", settings, replica=3)
    with pytest.raises(UsageError, match="unknown recovery procedure"):
        recover.build("queue-empty", settings)


async def test_library_dry_run_returns_the_structured_plan(
    make_settings: Any, fake_kube: FakeKube
) -> None:
    settings = make_settings()
    result = await recover.run(
        "scale",
        settings,
        dry_run=True,
        replicas=3,
        kube_options={"kubeconfig": str(fake_kube.kubeconfig_path), "namespace": "ms07"},
    )
    data = result.to_dict()
    assert data["status"] == "dry-run" and data["ok"] is True
    assert data["steps"][0]["command"] == (
        "kubectl scale deployment/ms07-distributor -n ms07 --replicas=3 && "
        "kubectl rollout status deployment/ms07-distributor -n ms07 --timeout=300s"
    )
    assert (
        data["steps"][0]["precondition"]["message"]
        == "deployment ms07/ms07-distributor: 2 -> 3 replicas (2 running now)"
    )
    assert fake_kube.mutations() == []


def test_ctrl_c_in_the_cli_prints_the_state_and_exits_130(
    recover_env: dict[str, str], fake_kube: FakeKube, rc: redis_sync.Redis, tmp_path: Path
) -> None:
    rc.set(keys.heartbeat("a-worker-that-never-stops"), "{}")
    out = tmp_path / "out.txt"
    env = {**os.environ, **recover_env, "PYTHONUNBUFFERED": "1"}
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ms07",
                "recover",
                "queue-full",
                "--yes",
                "--watch-seconds",
                "0",
            ],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while (
            "[2/6]" not in out.read_text() and proc.poll() is None and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = " ".join(out.read_text().split())
    assert code == 130, text
    assert "Interrupted. The system is now in this state:" in text
    assert "- done: step 1, Scale the deployment to 0 replicas: scaled from 2 to 0 replicas" in text
    assert "- interrupted: step 2, Wait until no consumer is active" in text
    assert "- not done: step 6, Watch the queue depth fall" in text
    assert (
        "ms07 recover queue-full --watch-seconds 0 --replicas 2 --from-step 2 --plan-id queue-full-"
        in text
    )
    assert [r.body for r in fake_kube.mutations()] == [{"spec": {"replicas": 0}}]
