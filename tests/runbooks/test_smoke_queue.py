"""Smoke tests of the queue runbooks against a live environment: the problem is made for
real, the runbook runs through the library, and the problem must be gone."""

from __future__ import annotations

import json
from typing import Any

from ms07 import keys
from ms07.ops import backup
from ms07.ops.submit import submit
from tests.runbooks.conftest import DEST, explain
from tests.support import hang, wait_for

STREAM = keys.stream("default")
DEAD = "ms07-distributor-dead-1-abc123"


async def test_queue_message_loss_reclaims_requeues_and_delivers(live: Any) -> None:
    env = await live(engine=False)
    rc = env.rc
    # A worker died holding entries: their jobs are in PostgreSQL, the entries pending on a
    # consumer with no heartbeat.
    held = [env.job() for _ in range(4)]
    rc.xgroup_create(STREAM, keys.GROUP, id="0", mkstream=True)
    for did in held:
        rc.xadd(STREAM, {"id": did, "destination": DEST, "attempt": "1"})
    rc.xreadgroup(keys.GROUP, DEAD, {STREAM: ">"}, count=10)
    # And Redis lost other jobs altogether (eviction, a restart without AOF).
    lost = [env.job() for _ in range(3)]
    first = await env.engine_for(env.fake.pod_names()[0])
    env.settings = env.settings.with_overrides(health_url=f"http://127.0.0.1:{first.http_port}")
    # Dead for a while: idle longer than reclaim-pending's --min-idle-ms (1 s).
    await wait_for(
        lambda: {c["name"]: c["idle"] for c in rc.xinfo_consumers(STREAM, keys.GROUP)}[DEAD] > 1100,
        what="the dead consumer idle",
    )

    result = await env.run("queue-message-loss", yes=True)

    assert result.status == "completed", explain(result)
    states = {s.index: (s.state, s.verdict) for s in result.steps}
    assert states[2][0] == "skipped"  # no DLQ
    assert states[3] == ("passed", "completed") and states[4] == ("passed", "completed")
    assert states[5][0] == "passed" and states[6][0] == "passed"
    found = " ".join(result.steps[0].lines)
    assert (
        "queue.dead_consumers" in found
        and "queue.lost_messages" in found
        and "3 open job(s)" in found
    )

    # The problem is gone: every job delivered once it was handed back, the dead consumer removed.
    await wait_for(
        lambda: env.delivered_ids() >= set(held) | set(lost), timeout=20, what="deliveries"
    )
    assert DEAD not in {c["name"] for c in rc.xinfo_consumers(STREAM, keys.GROUP)}
    await wait_for(
        lambda: {r[0] for r in env.sql("SELECT status FROM distribution_jobs")} == {"delivered"},
        timeout=10,
        what="jobs delivered in PostgreSQL",
    )

    # One run id for the runbook and the procedures it ran, $USER as the operator.
    rows = env.audit()
    assert {r["plan_id"] for r in rows} == {result.run_id}
    assert {r["operator"] for r in rows} == {"oncall-tester"}
    mine = [
        (r["step_index"], r["outcome"]) for r in rows if r["plan"] == "runbook:queue-message-loss"
    ]
    assert mine == [
        (None, "started"),
        (1, "running"),
        (1, "found"),  # the diagnose step found the problem: not a pass
        (2, "skipped"),
        (3, "running"),
        (3, "passed"),
        (4, "running"),
        (4, "passed"),
        (5, "running"),
        (5, "passed"),
        (6, "running"),
        (6, "passed"),
        (None, "completed"),
    ]
    assert {r["plan"] for r in rows} == {
        "runbook:queue-message-loss",
        "reclaim-pending",
        "requeue-from-db",
    }
    lines = [json.loads(x) for x in env.audit_file().read_text().splitlines()]
    assert len(lines) == len(rows) and all(x["plan_id"] == result.run_id for x in lines)


async def test_queue_message_loss_dry_run_describes_and_changes_nothing(live: Any) -> None:
    env = await live()
    lost = [env.job() for _ in range(2)]
    result = await env.run("queue-message-loss", dry_run=True)
    assert result.status == "dry-run" and result.exit_code == 1  # it found a problem
    by = {s.index: s for s in result.steps}
    assert by[1].state == "found"
    # What a real run would and would not change.
    assert result.would_change == ["step 4: ms07 recover requeue-from-db --yes"], result.would_change
    assert any(x.startswith("step 3 (ms07 recover reclaim-pending") for x in result.would_not)
    assert "queue.lost_messages" in " ".join(by[1].lines)
    assert by[3].state == "skipped"  # no dead consumer
    assert by[4].verdict == "dry-run" and any("would run" in x for x in by[4].lines)
    assert by[5].state == "unmet" and "not yet expected in a dry run" in by[5].message
    assert env.audit() == [] and not env.audit_file().exists()
    assert env.rc.xlen(STREAM) == 0 and env.delivered_ids() == set()
    assert {r[0] for r in env.sql("SELECT distribution_id::text FROM distribution_jobs")} == set(
        lost
    )


async def test_queue_full_backs_up_clears_and_scales_back(live: Any) -> None:
    env = await live(
        engine=False,
        diagnose={"queue_depth_warning": 20},
        service={"concurrency": 2, "prefetch": 1.0},
    )
    env.sink.on("/in", hang(30))  # the destination stalls: the backlog grows
    pod = env.fake.pod_names()[0]
    engine = await env.engine_for(pod)
    env.settings = env.settings.with_overrides(health_url=f"http://127.0.0.1:{engine.http_port}")
    env.stop_with_pods()
    async with engine.runtime.connection() as conn:
        for i in range(30):
            await submit(conn, engine.queue, env.engine_settings, [DEST], {"n": i})
    await wait_for(lambda: env.sink.counts["/in"] == 2, what="two deliveries in flight")
    assert env.rc.xlen(STREAM) == 30

    result = await env.run("queue-full", yes=True)

    assert result.status == "completed", explain(result)
    by = {s.index: s for s in result.steps}
    assert "timeouts.queue_depth: queue depth 30 is above 20" in " ".join(by[2].lines)
    assert by[3].verdict == "completed"
    # Scaled to 0 (the engine stopped with its pod), backed up, cleared, scaled back to 2.
    scale = "/apis/apps/v1/namespaces/ms07/deployments/ms07-distributor/scale"
    assert [r.body for r in env.fake.mutations() if r.path == scale] == [
        {"spec": {"replicas": 0}},
        {"spec": {"replicas": 2}},
    ]
    assert engine.draining and len(env.fake.ready_pods()) == 2
    [file] = (env.state_dir / "backups").glob("queue-*.jsonl")
    verified = backup.verify(file)
    assert verified.count == 30
    assert {
        json.loads(x)["fields"]["id"] for x in file.read_text().splitlines()[1:] if '"fields"' in x
    } == {r[0] for r in env.sql("SELECT distribution_id::text FROM distribution_jobs")}
    assert env.rc.xlen(STREAM) == 0
    assert by[4].state == "passed" and by[5].state == "passed"
    assert f"ms07 queue restore {file}" in " ".join(by[3].lines)
