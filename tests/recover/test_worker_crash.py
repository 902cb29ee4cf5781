"""``recover worker-crash`` against the fake API: logs of the crash, replacement Ready."""

from __future__ import annotations

import json
from typing import Any

from tests.k8s_fake import FakeKube
from tests.recover.conftest import audit_rows

PODS = "/api/v1/namespaces/ms07/pods"
CRASH_LOG = (
    "\n".join(
        [
            json.dumps(
                {
                    "timestamp": "2024-01-15T10:00:00Z",
                    "level": "INFO",
                    "component": "engine",
                    "message": "engine started",
                }
            ),
            json.dumps(
                {
                    "timestamp": "2024-01-15T10:05:00Z",
                    "level": "ERROR",
                    "component": "memory",
                    "message": "memory threshold exceeded",
                    "metadata": {"rss_mb": 1900.5},
                }
            ),
            "fatal: runtime: out of memory",
        ]
    )
    + "\n"
)


def test_replaces_the_crashed_pod_and_shows_why_it_died(
    cli: Any, fake_kube: FakeKube, database_url: str
) -> None:
    healthy, crashed = fake_kube.pod_names()
    fake_kube.crash(crashed, reason="OOMKilled", exit_code=137, restarts=4, previous_logs=CRASH_LOG)

    result = cli("recover", "worker-crash", "--yes", "--lines", "20")
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())

    assert "2024-01-15T10:05:00Z ERROR memory memory threshold exceeded rss_mb=1900.5" in out
    assert "fatal: runtime: out of memory" in out
    assert "OOMKilled" in out and "137" in out
    assert "engine started" in out  # the new pod's first lines

    calls = [(r.method, r.path, {k: v[0] for k, v in r.query.items()}) for r in fake_kube.requests]
    assert ("GET", f"{PODS}/{crashed}/log", {"previous": "true", "tailLines": "20"}) in calls
    assert (
        "GET",
        "/apis/metrics.k8s.io/v1beta1/namespaces/ms07/pods",
        {"labelSelector": "app=ms07-distributor"},
    ) in calls
    assert [(r.method, r.path) for r in fake_kube.mutations()] == [("DELETE", f"{PODS}/{crashed}")]
    pods = fake_kube.ready_pods()
    assert healthy in pods and crashed not in pods and len(pods) == 2
    new = next(p for p in pods if p != healthy)
    assert ("GET", f"{PODS}/{new}/log", {"limitBytes": "262144"}) in calls
    assert f"{crashed} -> {new} Ready" in out
    done = [
        (r["step_index"], r["outcome"])
        for r in audit_rows(database_url)
        if r["outcome"] != "running"
    ]
    assert done == [
        (None, "started"),
        (1, "ok"),
        (2, "ok"),
        (3, "ok"),
        (4, "ok"),
        (None, "completed"),
    ]


def test_nothing_crashed_nothing_deleted(cli: Any, fake_kube: FakeKube) -> None:
    result = cli("recover", "worker-crash", "--yes")
    assert result.exit_code == 0, result.output
    assert "none crashed: nothing to replace" in " ".join(result.output.split())
    assert fake_kube.mutations() == []


def test_named_pod_that_does_not_exist_blocks_the_plan(cli: Any, fake_kube: FakeKube) -> None:
    result = cli("recover", "worker-crash", "--yes", "--pod", "nope-123")
    assert result.exit_code == 1
    assert "step 1 cannot run: no pod nope-123 with label app=ms07-distributor" in " ".join(
        result.output.split()
    )
    assert fake_kube.mutations() == []


def test_restarted_but_running_pod_is_replaced_only_when_named(
    cli: Any, fake_kube: FakeKube
) -> None:
    first, second = fake_kube.pod_names()
    fake_kube.crash(
        first, reason="Error", exit_code=1, restarts=1, previous_logs="boom\n", waiting=None
    )
    assert cli("recover", "worker-crash", "--yes").exit_code == 0
    assert fake_kube.mutations() == []
    result = cli("recover", "worker-crash", "--yes", "--pod", first)
    assert result.exit_code == 0, result.output
    assert [(r.method, r.path) for r in fake_kube.mutations()] == [("DELETE", f"{PODS}/{first}")]
