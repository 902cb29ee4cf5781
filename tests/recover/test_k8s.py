"""``ms07.kube.client`` with the real kubernetes client against the fake API: the exact
requests each call makes, and the one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ms07.kube.client import RESTARTED_AT, Kube, KubeError, KubeNotFound, parse_pod
from tests.k8s_fake import FakeKube

NS = "/api/v1/namespaces/ms07"
APPS = "/apis/apps/v1/namespaces/ms07/deployments/ms07-distributor"
STRATEGIC = "application/strategic-merge-patch+json"


@pytest.fixture
def kube(fake_kube: FakeKube) -> Kube:
    return Kube(
        "ms07", "ms07-distributor", kubeconfig=str(fake_kube.kubeconfig_path), poll_interval=0.1
    )


def _req(fake: FakeKube) -> list[tuple[str, str, dict[str, str], object, str | None]]:
    return [
        (r.method, r.path, {k: v[0] for k, v in r.query.items()}, r.body, r.content_type)
        for r in fake.requests
    ]


async def test_scale_and_wait(kube: Kube, fake_kube: FakeKube) -> None:
    assert await kube.get_scale() == (2, 2)
    await kube.scale(3)
    state = await kube.wait_replicas(3, 10)
    assert (state.replicas, state.ready, state.current) == (3, 3, 3)
    reqs = _req(fake_kube)
    assert reqs[:2] == [
        ("GET", f"{APPS}/scale", {}, None, None),
        ("PATCH", f"{APPS}/scale", {}, {"spec": {"replicas": 3}}, STRATEGIC),
    ]
    assert {r[:2] for r in reqs[2:]} == {("GET", APPS)}


async def test_rollout_restart_patches_the_template_and_waits(
    kube: Kube, fake_kube: FakeKube
) -> None:
    before = set(fake_kube.pod_names())
    stamp = await kube.rollout_restart()
    state = await kube.wait_rollout(10)
    assert state.rolled_out() and state.restarted_at == stamp
    assert not set(fake_kube.ready_pods()) & before
    patch = fake_kube.mutations()[0]
    assert (patch.method, patch.path, patch.content_type) == ("PATCH", APPS, STRATEGIC)
    assert patch.body == {
        "spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}
    }


async def test_pods_logs_delete_and_replacement(kube: Kube, fake_kube: FakeKube) -> None:
    first, second = fake_kube.pod_names()
    fake_kube.crash(first, previous_logs="a\nb\nc\n")
    pods = {p.name: p for p in await kube.pods()}
    crashed = pods[first]
    assert crashed.crashed and crashed.status == "CrashLoopBackOff"
    assert (crashed.last_reason, crashed.last_exit_code, crashed.restarts) == ("OOMKilled", 137, 3)
    assert not pods[second].crashed

    assert await kube.pod_log(first, previous=True, tail=2) == "b\nc\n"
    assert await kube.pod_log(second, previous=True, tail=2) is None  # it never crashed
    await kube.delete_pod(first)
    new = await kube.wait_replacement(first, set(pods), 10)
    assert new.ready and new.name not in pods
    calls = [(m, p, q) for m, p, q, _, _ in _req(fake_kube)]
    assert calls[:4] == [
        ("GET", f"{NS}/pods", {"labelSelector": "app=ms07-distributor"}),
        ("GET", f"{NS}/pods/{first}/log", {"previous": "true", "tailLines": "2"}),
        ("GET", f"{NS}/pods/{second}/log", {"previous": "true", "tailLines": "2"}),
        ("DELETE", f"{NS}/pods/{first}", {}),
    ]


async def test_metrics_when_available_and_none_when_not(kube: Kube, fake_kube: FakeKube) -> None:
    metrics = await kube.pod_metrics()
    assert metrics and metrics[0]["containers"]["distributor"]["memory"] == "100Mi"
    assert fake_kube.requests[-1].path == "/apis/metrics.k8s.io/v1beta1/namespaces/ms07/pods"
    fake_kube.metrics_available = False
    assert await kube.pod_metrics() is None


async def test_errors_are_one_clear_line(kube: Kube, fake_kube: FakeKube) -> None:
    fake_kube.fail("DELETE", "/pods/", 403, times=1)
    with pytest.raises(KubeError) as denied:
        await kube.delete_pod(fake_kube.pod_names()[0])
    assert str(denied.value).startswith(
        "kubernetes: permission denied to delete pods in namespace ms07: the Role "
        "needs verb 'delete' on resource 'pods' in apiGroup ''"
    )
    assert denied.value.exit_code == 3
    with pytest.raises(KubeNotFound) as missing:
        await kube.delete_pod("ghost")
    assert (
        str(missing.value) == 'kubernetes: pod ms07/ghost not found (404): pods "ghost" not found'
    )
    assert missing.value.exit_code == 4
    fake_kube.fail("GET", "/deployments/", 500, times=1)
    with pytest.raises(
        KubeError, match=r"get deployments \(deployment ms07/ms07-distributor\) failed: HTTP 500"
    ):
        await kube.deployment_state()
    assert "\n" not in str(denied.value) + str(missing.value)


async def test_wait_timeout_says_where_it_stopped(kube: Kube, fake_kube: FakeKube) -> None:
    fake_kube.crash(fake_kube.pod_names()[0])
    with pytest.raises(KubeError, match=r"not at 2 replicas \(1/2 ready"):
        await kube.wait_replicas(2, 0.5)


async def test_explicit_kubeconfig_wins_over_in_cluster(
    fake_kube: FakeKube, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setenv("KUBECONFIG", str(fake_kube.kubeconfig_path))
    kube = Kube("ms07", "ms07-distributor")
    assert await kube.get_scale() == (2, 2)
    assert kube.source == f"kubeconfig {fake_kube.kubeconfig_path}"
    monkeypatch.delenv("KUBECONFIG")
    in_cluster = Kube("ms07", "ms07-distributor")  # no service account token here
    with pytest.raises(KubeError, match="no usable configuration"):
        await in_cluster.get_scale()
    kube.close()


def test_parse_pod_reads_the_latest_termination() -> None:
    pod = parse_pod(
        {
            "metadata": {"name": "p", "creationTimestamp": "2024-01-15T10:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
            "status": {
                "phase": "Running",
                "containerStatuses": [
                    {
                        "name": "a",
                        "ready": True,
                        "restartCount": 1,
                        "lastState": {
                            "terminated": {
                                "reason": "Error",
                                "exitCode": 1,
                                "finishedAt": "2024-01-15T10:01:00Z",
                            }
                        },
                    },
                    {
                        "name": "b",
                        "ready": False,
                        "restartCount": 2,
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                        "lastState": {
                            "terminated": {
                                "reason": "OOMKilled",
                                "exitCode": 137,
                                "finishedAt": "2024-01-15T10:02:00Z",
                            }
                        },
                    },
                ],
            },
        }
    )
    assert (pod.restarts, pod.ready, pod.last_reason, pod.last_exit_code) == (
        3,
        False,
        "OOMKilled",
        137,
    )
    assert pod.crashed and pod.containers == ["a", "b"]


def test_one_kubeconfig_resolution_for_the_client_and_the_default_namespace(tmp_path: Path) -> None:
    from ms07.config import default_k8s_namespace
    from ms07.kube import source

    first = tmp_path / "first"
    first.write_text(
        "current-context: c\ncontexts:\n- name: c\n  context: {cluster: x, namespace: from-first}\n"
    )
    env = {"KUBECONFIG": f"{first}{os.pathsep}{tmp_path / 'second'}"}
    assert source.kubeconfig_file(None, env) == str(first)
    assert source.configured(None, env) and default_k8s_namespace(env) == "from-first"
    assert source.kubeconfig_file(str(tmp_path / "explicit"), env) == str(tmp_path / "explicit")
    assert not source.configured(str(tmp_path / "explicit"), env), "--kubeconfig wins over KUBECONFIG"
    assert source.configured(str(tmp_path / "explicit"), {"KUBERNETES_SERVICE_HOST": "10.0.0.1"})
