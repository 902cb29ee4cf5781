"""``recover scale``: current -> N, Ready, consumers joining the group."""

from __future__ import annotations

import json
from typing import Any

import redis as redis_sync

from ms07 import keys
from tests.k8s_fake import FakeKube
from tests.recover.conftest import seed

SCALE = "/apis/apps/v1/namespaces/ms07/deployments/ms07-distributor/scale"


def test_scale_up_and_watch_consumers_join(
    cli: Any, fake_kube: FakeKube, rc: redis_sync.Redis
) -> None:
    seed(rc, 1)
    for pod in fake_kube.pod_names():
        rc.set(keys.heartbeat(f"{pod}-1-aaaaaa"), "{}")

    def engine_starts(pod: str) -> None:  # what an engine does when its pod comes up
        rc.set(keys.heartbeat(f"{pod}-1-aaaaaa"), "{}")
        rc.xgroup_createconsumer(keys.stream("default"), keys.GROUP, f"{pod}-1-aaaaaa")

    fake_kube.on_pod_ready = engine_starts
    result = cli("recover", "scale", "--replicas", "4", "--yes", "--consumers-timeout", "10")
    assert result.exit_code == 0, result.output
    assert [(r.method, r.path, r.body) for r in fake_kube.mutations()] == [
        ("PATCH", SCALE, {"spec": {"replicas": 4}})
    ]
    assert len(fake_kube.ready_pods()) == 4
    out = " ".join(result.output.split())
    assert "2 -> 4 replicas, 4 Ready" in out
    assert "4 consumer(s) active in group workers" in out


def test_no_engine_joining_is_a_warning_not_a_failure(
    cli: Any, fake_kube: FakeKube, rc: redis_sync.Redis
) -> None:
    result = cli("recover", "scale", "--replicas", "3", "--yes", "--consumers-timeout", "0.5")
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "0 of 3 consumers active after 0.5s" in out
    assert "completed with 1 warning(s)" in out


def test_confirmation_defaults_to_no(cli: Any, fake_kube: FakeKube, database_url: str) -> None:
    from tests.recover.conftest import audit_rows

    for answer in ("\n", "n\n", ""):
        result = cli("recover", "scale", "--replicas", "5", input=answer)
        assert result.exit_code == 1, result.output
        assert "not confirmed: nothing was done" in result.output
    assert fake_kube.mutations() == []
    assert audit_rows(database_url) == []
    yes = cli("recover", "scale", "--replicas", "3", "--consumers-timeout", "0", input="y\n")
    assert yes.exit_code == 0, yes.output
    assert [r.body for r in fake_kube.mutations()] == [{"spec": {"replicas": 3}}]


def test_json_needs_dry_run_or_yes(cli: Any, fake_kube: FakeKube) -> None:
    result = cli("recover", "scale", "--replicas", "3", "--json")
    assert result.exit_code == 2
    assert "--json needs --dry-run or --yes" in result.output
    assert fake_kube.requests == []


def test_json_result_of_an_unattended_run(cli: Any, fake_kube: FakeKube) -> None:
    result = cli(
        "recover", "scale", "--replicas", "1", "--yes", "--json", "--consumers-timeout", "0"
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["status"] == "completed" and data["ok"] is True
    assert [(s["index"], s["status"]) for s in data["steps"]] == [(1, "ok"), (2, "skipped")]
    assert data["steps"][0]["verification"] == "1/1 ready, 1 updated, 1 current, 1 available"
    assert data["plan_id"].startswith("scale-") and data["audit_db"] == "6 rows in recovery_audit"
