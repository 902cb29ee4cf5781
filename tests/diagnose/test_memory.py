"""diagnose memory: a growing RSS series, pods from a Kubernetes API, /debug/memory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from ms07.diagnose import DiagnoseOptions, run_check_async
from ms07.diagnose.memory import ms07_processes
from tests.diagnose.conftest import acli, ids, parse, validate_check
from tests.support import Sink


def beat(db, worker: str, rss: list[int], every: float = 60.0, status: str = "active") -> None:
    """A worker row and one sample per minute ending now."""
    db.execute("INSERT INTO worker_heartbeats (worker_id, host, pid, started_at, updated_at, status, rss_bytes, "
               "version) VALUES (%s, 'host', 42, now() - interval '2 hours', now(), %s, %s, 'x')",
               (worker, status, rss[-1]))
    n = len(rss)
    db.execute("INSERT INTO worker_heartbeat_samples (worker_id, sampled_at, rss_bytes) "
               "SELECT %s, now() - make_interval(secs => (%s - i) * %s), (%s::bigint[])[i] "
               "FROM generate_series(1, %s) i", (worker, n, every, rss, n))


async def test_growing_rss_is_flagged(make_settings, db, cli, config_file) -> None:
    mib = 1024 * 1024
    beat(db, "leaky", [200 * mib + i * 2 * mib for i in range(50)])  # +49% in 49 min
    beat(db, "steady", [200 * mib + (i % 3) * mib for i in range(50)])
    beat(db, "young", [100 * mib + i * 20 * mib for i in range(4)])  # too little history to judge
    settings = make_settings()
    result = await run_check_async(settings, "memory")
    growth = [f for f in result.findings if f.id == "memory.rss_growth"]
    assert [f.subject for f in growth] == ["leaky"] and growth[0].severity == "warning"
    assert "RSS grew 49%" in growth[0].summary
    table = next(s for s in result.sections if s.title.startswith("worker RSS"))
    assert {r[0] for r in table.rows} == {"leaky", "steady", "young"}
    assert result.finding("kubernetes").severity == "info"  # no cluster here: skipped, not failed
    assert result.exit_code == 1
    res = await acli(cli, ["diagnose", "memory", "--json"], config=config_file())
    assert res.exit_code == 1
    validate_check(parse(res))
    res = await acli(cli, ["diagnose", "memory", "--json", "--rss-growth-percent", "60"], config=config_file())
    assert res.exit_code == 0 and "memory.rss_growth" not in ids(parse(res))


async def test_rss_near_the_memory_guard(make_settings, db) -> None:
    mib = 1024 * 1024
    beat(db, "big", [950 * mib] * 3)
    result = await run_check_async(make_settings(memory={"threshold_mb": 1000}), "memory")
    assert result.finding("rss_near_threshold").severity == "warning"


def _pod(name: str, reason: str | None, restarts: int) -> dict:
    last = {"terminated": {"reason": reason, "exitCode": 137, "finishedAt": "2024-01-15T10:00:00Z"}} if reason else {}
    return {
        "metadata": {"name": name, "namespace": "zenia"},
        "spec": {"containers": [{"name": "ms07", "resources": {"limits": {"memory": "1Gi"}}}]},
        "status": {"phase": "Running", "containerStatuses": [{
            "name": "ms07", "restartCount": restarts, "ready": True, "image": "ms07", "imageID": "x",
            "lastState": last, "state": {"running": {}}}]},
    }


async def kube_api() -> tuple[Sink, list[str]]:
    """A Kubernetes API on loopback: a pod list with an OOMKilled pod, and pod metrics."""
    seen: list[str] = []

    async def pods(request: web.Request, n: int) -> web.StreamResponse:
        seen.append(request.query.get("labelSelector", ""))
        return web.json_response({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [
            _pod("ms07-distributor-a", "OOMKilled", 4), _pod("ms07-distributor-b", None, 0)]})

    async def metrics(request: web.Request, n: int) -> web.StreamResponse:
        return web.json_response({"kind": "PodMetricsList", "items": [
            {"metadata": {"name": "ms07-distributor-b"},
             "containers": [{"name": "ms07", "usage": {"memory": "512Mi"}}]}]})

    sink = await Sink().start()
    sink.on("/api/v1/namespaces/zenia/pods", pods)
    sink.on("/apis/metrics.k8s.io/v1beta1/namespaces/zenia/pods", metrics)
    return sink, seen


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "t", "cluster": {"server": server}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "u", "namespace": "zenia"}}],
        "users": [{"name": "u", "user": {"token": "k8s-token"}}],
    }))
    return path


async def test_oom_killed_pod_from_the_kubernetes_api(make_settings, tmp_path) -> None:
    sink, seen = await kube_api()
    try:
        settings = make_settings(k8s_namespace="zenia", memory={"threshold_mb": 1024})
        opts = DiagnoseOptions.from_settings(settings, kubeconfig=str(kubeconfig(tmp_path / "kc", sink.url(""))))
        result = await run_check_async(settings, "memory", opts)
    finally:
        await sink.stop()
    assert seen == ["app=ms07-distributor"]
    oom = result.finding("oom_killed")
    assert oom.severity == "critical" and oom.subject == "ms07-distributor-a"
    guard = [f for f in result.findings if f.id == "memory.guard_above_limit"]
    assert {f.subject for f in guard} == {"ms07-distributor-a", "ms07-distributor-b"}  # 1024 MB guard >= 1 GiB limit
    table = next(s for s in result.sections if s.title.startswith("pods"))
    assert table.rows[1][:5] == ["ms07-distributor-b", "Running", "512.0 MiB", "1.0 GiB", "0"]
    assert result.exit_code == 2


async def test_unreachable_cluster_is_unknown(make_settings, tmp_path) -> None:
    from tests.diagnose.test_timeouts import closed_port

    settings = make_settings()
    kc = kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{closed_port()}")
    result = await run_check_async(settings, "memory", DiagnoseOptions.from_settings(settings, kubeconfig=str(kc)))
    f = result.finding("kubernetes_unavailable")
    assert f.unknown and "pods" in f.summary
    assert result.status == "unknown" and result.exit_code == 3


async def test_top_allocations_from_the_engine(make_settings, monkeypatch, start_engine) -> None:
    import tracemalloc

    monkeypatch.setenv("MS07_API_TOKEN", "api-token-1")
    settings = make_settings(service={"debug_memory": True})
    engine = await start_engine(settings)
    opts = DiagnoseOptions.from_settings(settings, url=f"http://127.0.0.1:{engine.http_port}")
    result = await run_check_async(settings, "memory", opts)
    monkeypatch.setenv("MS07_API_TOKEN", "wrong")
    refused = await run_check_async(settings, "memory", opts)
    tracemalloc.stop()  # the engine's /debug/memory started it for the whole process
    f = result.finding("allocations")
    assert f.severity == "info" and f.summary.startswith("traced memory")
    assert any(s.title.startswith("top allocation sites") and s.rows for s in result.sections)
    assert refused.finding("engine_unavailable").unknown



@pytest.fixture
def two_users_ms07() -> Iterator[tuple[int, int]]:
    """Two processes that look like `ms07 300` to ps: one ours, one of nobody (65534),
    as on a shared host. Their pids."""
    if os.geteuid() != 0:
        pytest.skip("starting a process as another user needs root")
    sleep = shutil.which("sleep")
    mine = subprocess.Popen(["ms07", "300"], executable=sleep)  # noqa: S603
    theirs = subprocess.Popen(["ms07", "300"], executable=sleep, user=65534)  # noqa: S603
    try:
        yield mine.pid, theirs.pid
    finally:
        for p in (mine, theirs):
            p.kill()
            p.wait(10)


async def test_other_users_ms07_processes_are_not_listed(make_settings, two_users_ms07: tuple[int, int]) -> None:
    mine, theirs = two_users_ms07
    result = await run_check_async(make_settings(), "memory")
    section = next(s for s in result.sections if s.title.startswith("ms07 processes"))
    assert str(mine) in {r[0] for r in section.rows} and str(theirs) not in {r[0] for r in section.rows}
    assert section.title == "ms07 processes of user root on this machine"
    assert "of other users not listed" in result.finding("local_processes").evidence
    procs, others = ms07_processes()
    assert mine in {p["pid"] for p in procs} and theirs not in {p["pid"] for p in procs} and others >= 1
