"""``recover queue-full`` end to end: real Redis and PostgreSQL, the real kubernetes client
against the fake API server."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import redis as redis_sync

from ms07 import keys
from ms07.ops import backup
from ms07.recover import plan as P
from ms07.recover import queue_full
from tests.k8s_fake import FakeKube
from tests.recover.conftest import audit_lines, audit_rows, seed, snapshot
from tests.support import Sink, destination, wait_for

SCALE = "/apis/apps/v1/namespaces/ms07/deployments/ms07-distributor/scale"


def _stop_consumers_with_pods(fake: FakeKube, rc: redis_sync.Redis) -> None:
    """A pod that goes away stops its engine, whose farewell deletes its heartbeat."""

    def gone(pod: str) -> None:
        for key in rc.scan_iter(f"{keys.heartbeat(pod)}*"):
            rc.delete(key)

    fake.on_pod_gone = gone


def _fields(rc: redis_sync.Redis) -> list[dict[str, str]]:
    return sorted((f for _, f in rc.xrange(keys.stream("default"))), key=lambda f: f["id"])


def test_queue_full_end_to_end_and_restore(
    cli: Any, fake_kube: FakeKube, rc: redis_sync.Redis, database_url: str, tmp_path: Path
) -> None:
    pod = fake_kube.pod_names()[0]
    consumer = f"{pod}-7-abcdef"
    seed(rc, 30, delayed=5, pending_for=consumer, pending=4)
    rc.set(keys.heartbeat(consumer), "{}")
    before_fields = _fields(rc)
    before_delayed = rc.zrange(keys.delayed("default"), 0, -1, withscores=True)
    _stop_consumers_with_pods(fake_kube, rc)

    result = cli(
        "recover", "queue-full", "--yes", "--watch-seconds", "0.5", "--idle-seconds", "0.2"
    )
    assert result.exit_code == 0, result.output

    # Kubernetes: exactly two writes, to 0 then back to the previous 2, strategic merge patches.
    writes = [(r.method, r.path, r.body, r.content_type) for r in fake_kube.mutations()]
    assert writes == [
        ("PATCH", SCALE, {"spec": {"replicas": 0}}, "application/strategic-merge-patch+json"),
        ("PATCH", SCALE, {"spec": {"replicas": 2}}, "application/strategic-merge-patch+json"),
    ]
    assert len(fake_kube.ready_pods()) == 2
    assert all(r.authorization == "Bearer fake-token" for r in fake_kube.requests)

    # Redis: every backed-up entry removed, pending ones acknowledged too; the group stays.
    assert rc.xlen(keys.stream("default")) == 0
    assert rc.zcard(keys.delayed("default")) == 0
    assert rc.xpending(keys.stream("default"), keys.GROUP)["pending"] == 0

    files = list((tmp_path / "state" / "backups").glob("queue-*.jsonl"))
    assert len(files) == 1
    assert backup.verify(files[0]).count == 35
    assert f"ms07 queue restore {files[0]}" in result.output.replace("\n", "")

    # Audit: every step started and ended, in the table and in the JSONL file.
    rows = audit_rows(database_url)
    outcomes = [(r["step_index"], r["outcome"]) for r in rows if r["outcome"] != "running"]
    assert outcomes == [
        (None, "started"),
        (1, "ok"),
        (2, "ok"),
        (3, "ok"),
        (4, "ok"),
        (5, "ok"),
        (6, "ok"),
        (None, "completed"),
    ]
    assert {r["operator"] for r in rows} == {"oncall-tester"}
    assert len({r["plan_id"] for r in rows}) == 1
    assert rows[1]["command"].startswith(
        "kubectl scale deployment/ms07-distributor --replicas=0 -n ms07"
    )
    lines = audit_lines(tmp_path / "state")
    assert [(x["step_index"], x["outcome"]) for x in lines] == [
        (r["step_index"], r["outcome"]) for r in rows
    ]
    assert all(x["recorded_in_db"] for x in lines)

    # The way back: every entry with its fields, every delayed retry with its score.
    restored = cli("queue", "restore", str(files[0]))
    assert restored.exit_code == 0, restored.output
    assert _fields(rc) == before_fields
    assert rc.zrange(keys.delayed("default"), 0, -1, withscores=True) == before_delayed


def test_dry_run_changes_nothing(
    cli: Any, fake_kube: FakeKube, rc: redis_sync.Redis, database_url: str, tmp_path: Path
) -> None:
    pod = fake_kube.pod_names()[0]
    seed(rc, 12, delayed=3, pending_for=f"{pod}-1-aaaaaa", pending=2)
    rc.set(keys.heartbeat(f"{pod}-1-aaaaaa"), "{}")
    before = snapshot(rc)
    dbsize = rc.dbsize()

    result = cli("recover", "queue-full", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "dry run: nothing was changed" in result.output
    shown = cli("recover", "queue-full", "--dry-run", "--json")
    assert shown.exit_code == 0, shown.output
    plan = json.loads(shown.output)
    assert plan["status"] == "dry-run"
    assert [s["status"] for s in plan["steps"]] == ["pending"] * 6
    commands = [s["command"] for s in plan["steps"]]
    assert commands[0].startswith("kubectl scale deployment/ms07-distributor --replicas=0 -n ms07")
    assert commands[3].startswith(
        "redis-cli XACK distribution:queue:{default} workers <ids in the backup>"
    )
    assert commands[4].startswith("kubectl scale deployment/ms07-distributor --replicas=2 -n ms07")
    assert plan["steps"][0]["precondition"] == {
        "ok": True,
        "message": "deployment ms07/ms07-distributor wants 2 replicas, 2 running",
    }
    assert plan["steps"][3]["precondition"]["ok"] is None  # needs the backup of step 3

    assert rc.dbsize() == dbsize
    assert snapshot(rc) == before
    assert {r.method for r in fake_kube.requests} == {"GET"}
    assert fake_kube.requests, "the dry run checks its preconditions against the API"
    assert audit_rows(database_url) == []
    assert not (tmp_path / "state" / "audit").exists()
    assert not (tmp_path / "state" / "backups").exists()


def test_deployment_already_at_zero_needs_an_explicit_count(
    cli: Any, fake_kube: FakeKube, rc: redis_sync.Redis
) -> None:
    assert (
        cli("recover", "scale", "--replicas", "0", "--yes", "--consumers-timeout", "0").exit_code
        == 0
    )
    result = cli("recover", "queue-full", "--yes", "--watch-seconds", "0")
    assert result.exit_code == 1
    assert (
        "step 5 cannot run: the deployment was at 0 replicas already: pass --replicas N"
        in " ".join(result.output.split())
    )
    assert len(fake_kube.mutations()) == 1, "blocked before anything ran"
    ok = cli("recover", "queue-full", "--yes", "--watch-seconds", "0", "--replicas", "2")
    assert ok.exit_code == 0, ok.output
    assert len(fake_kube.ready_pods()) == 2


class _AddsBeforeTheClear(P.Reporter):
    """Calls ``add`` when step 4 (the clear) starts: after the verified backup, before the clear."""

    def __init__(self, add: Callable[[], None]) -> None:
        self.add = add
        self.added = False

    def step_started(self, step: P.StepResult) -> None:
        if step.index == 4:
            self.add()
            self.added = True


def _job(database_url: str, destination: str) -> str:
    """A queued job row, as submit writes it (its stream entry is the test's to add)."""
    did = str(uuid.uuid4())
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO distribution_jobs (distribution_id, destination_name, status, payload, priority) "
            "VALUES (%s, %s, 'queued', '\\x7b7d', 'default')", (did, destination))
    return did


async def test_the_clear_removes_only_what_the_backup_holds(
    make_settings: Any, fake_kube: FakeKube, rc: redis_sync.Redis, database_url: str, tmp_path: Path,
    sink: Sink, start_engine: Any,
) -> None:
    """A distribution submitted after the backup and a retry that fell due after it are in
    no backup: the clear must leave them, and the workers, scaled back, deliver them."""
    dest = "ms09-reporter"
    settings = make_settings(destinations=[destination(dest, sink.url("/in"))],
                             distribution={"reconcile_after_seconds": 3600, "reconcile_interval_seconds": 3600})
    backed_up = seed(rc, 20, delayed=3)
    late_entry, late_retry = _job(database_url, dest), _job(database_url, dest)

    def add() -> None:
        rc.xadd(keys.stream("default"), {"id": late_entry, "destination": dest})
        rc.zadd(keys.delayed("default"), {late_retry: time.time()})

    reporter = _AddsBeforeTheClear(add)
    path = tmp_path / "queue.jsonl"
    plan = queue_full.build(settings, queue_full.Options(backup=str(path), watch_seconds=0, idle_seconds=0.2))
    async with P.PlanContext(settings, reporter=reporter,
                             kube_options={"kubeconfig": str(fake_kube.kubeconfig_path), "namespace": "ms07"}) as ctx:
        result = await P.execute(plan, ctx)
    assert result.status == "completed", result.message
    assert reporter.added

    held = backup.verify(path)
    in_backup = {o["fields"]["id"] for o in held.entries if o["t"] == "stream"} | {
        o["member"] for o in held.entries if o["t"] == "delayed"}
    assert set(backed_up) <= in_backup and not {late_entry, late_retry} & in_backup
    # Exactly what the backup holds is gone; what came after it is still there.
    assert [f["id"] for _, f in rc.xrange(keys.stream("default"))] == [late_entry]
    assert rc.zrange(keys.delayed("default"), 0, -1) == [late_retry]

    await start_engine(settings)  # the workers, scaled back
    await wait_for(lambda: sink.unique_keys("/in") == {late_entry, late_retry}, timeout=20,
                   what="both late distributions delivered")
