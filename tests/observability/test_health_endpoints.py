"""/health/live, /health/ready and /health/detailed in healthy, degraded and unhealthy
states, and the bearer token on every protected route."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest

from ms07 import __version__, keys
from tests.observability.conftest import TOKEN, auth, base
from tests.support import Sink, status, submit_n, wait_for

CHECKS = {"database", "redis", "queue", "workers", "destinations"}
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


async def _get(http: httpx.AsyncClient, url: str, token: str | None = TOKEN) -> tuple[int, Any]:
    resp = await http.get(url, headers=auth(token) if token else {})
    return resp.status_code, resp.json()


async def _ready_when(http: httpx.AsyncClient, engine: Any, status_: str, **checks: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        code, body = await _get(http, f"{base(engine)}/health/ready")
        match = body["status"] == status_ and all(body["checks"][k] == v for k, v in checks.items())
        return {"code": code, **body} if match else None

    return await wait_for(probe, timeout=20, interval=0.1, what=f"ready says {status_} {checks}")


async def test_healthy(api_token: str, healthy_sink_settings, sink: Sink, start_engine, http) -> None:
    engine = await start_engine(healthy_sink_settings("a"))
    ids = await submit_n(engine, "a", 3)
    await wait_for(lambda: sink.unique_keys("/a") >= set(ids), what="delivered")

    body = await _ready_when(http, engine, "healthy", **{c: "healthy" for c in CHECKS})
    assert body.pop("code") == 200
    assert set(body) == {"status", "timestamp", "version", "checks"}
    assert TIMESTAMP.fullmatch(body["timestamp"])
    assert body["version"] == __version__
    assert set(body["checks"]) == CHECKS

    code, d = await _get(http, f"{base(engine)}/health/detailed")
    assert code == 200
    assert d["status"] == "healthy" and d["checks"] == body["checks"]
    assert d["worker_id"] == engine.worker_id and d["uptime_seconds"] >= 0
    assert d["process"]["rss_bytes"] > 10_000_000
    assert d["process"]["in_flight"] == 0 and d["process"]["delivered"] == 3
    pg = d["database"]["pool"]
    assert pg["max"] >= pg["size"] >= pg["in_use"] >= 0 and pg["waiting"] == 0
    assert d["database"]["latency_ms"] >= 0 and d["redis"]["latency_ms"] >= 0
    assert d["redis"]["pool"]["in_use"] is not None
    q = d["queues"]["default"]
    assert (q["length"], q["pending"], q["delayed"]) == (0, 0, 0)
    assert q["group"]["name"] == "workers"
    assert d["dlq_size"] == 0
    [dest] = d["destinations"]
    assert dest["name"] == "a" and dest["url"] == sink.url("/a")
    assert (dest["health"], dest["state"], dest["circuit_state"]) == ("healthy", "healthy", "closed")
    assert set(dest["pool"]) == {"limit", "in_use", "idle"} and dest["pool"]["limit"] == 50
    assert dest["latency_samples"] == 3
    assert 0 < dest["p50_ms"] <= dest["p95_ms"] <= dest["p99_ms"]
    me = next(w for w in d["workers"] if w["worker_id"] == engine.worker_id)
    assert me["live"] is True and me["stale"] is False and me["rss_bytes"] > 0
    assert TIMESTAMP.fullmatch(d["timestamp"])

    resp = await http.get(f"{base(engine)}/health/live")  # no token needed
    assert resp.status_code == 200 and resp.json()["status"] == "alive"


async def test_degraded_when_a_destination_health_probe_fails(api_token, make_settings, sink: Sink, start_engine,
                                                              http) -> None:
    sink.on("/b/health", status(503))
    engine = await start_engine(make_settings(destinations=[
        {"name": "a", "url": sink.url("/a"), "health_url": sink.url("/a/health")},
        {"name": "b", "url": sink.url("/b"), "health_url": sink.url("/b/health")},
    ]))
    body = await _ready_when(http, engine, "degraded", destinations="degraded", workers="healthy")
    assert body["code"] == 200  # degraded still serves
    assert {k: v for k, v in body["checks"].items() if k != "destinations"} == {
        "database": "healthy", "redis": "healthy", "queue": "healthy", "workers": "healthy"}
    code, d = await _get(http, f"{base(engine)}/health/detailed")
    assert code == 200 and d["status"] == "degraded"
    by_name = {x["name"]: x for x in d["destinations"]}
    assert (by_name["a"]["health"], by_name["a"]["state"]) == ("healthy", "healthy")
    assert (by_name["b"]["health"], by_name["b"]["state"]) == ("unhealthy", "degraded")
    assert by_name["b"]["last_health_error"]


async def test_degraded_when_a_circuit_is_open(api_token, make_settings, sink: Sink, start_engine, http) -> None:
    sink.on("/b", status(500))
    engine = await start_engine(make_settings(destinations=[
        {"name": "a", "url": sink.url("/a")},
        {"name": "b", "url": sink.url("/b"), "circuit_breaker": {"failure_threshold": 1, "recovery_timeout": 60}},
    ]))
    await submit_n(engine, "b")
    body = await _ready_when(http, engine, "degraded", destinations="degraded")
    assert body["code"] == 200
    code, d = await _get(http, f"{base(engine)}/health/detailed")
    by_name = {x["name"]: x for x in d["destinations"]}
    assert by_name["b"]["circuit_state"] == "open" and by_name["b"]["state"] == "degraded"
    assert by_name["a"]["circuit_state"] == "closed"


async def test_every_destination_down_is_still_a_degraded_engine(
        api_token, make_settings, sink: Sink, start_engine, http) -> None:
    sink.on("/a/health", status(500))
    engine = await start_engine(make_settings(destinations=[
        {"name": "a", "url": sink.url("/a"), "health_url": sink.url("/a/health")}]))
    body = await _ready_when(http, engine, "degraded", destinations="degraded")
    assert body["code"] == 200


@pytest.mark.loop_errors_ok
async def test_unhealthy_when_redis_stops(api_token, private_redis, healthy_sink_settings, start_engine,
                                          http) -> None:
    settings = healthy_sink_settings("a").with_overrides(redis_url=private_redis.url)
    engine = await start_engine(settings)
    await _ready_when(http, engine, "healthy")
    private_redis.stop()

    body = await _ready_when(http, engine, "unhealthy", redis="unhealthy")
    assert body["code"] == 503
    assert body["checks"]["database"] == "healthy"
    assert body["checks"]["queue"] == "unhealthy"
    code, d = await _get(http, f"{base(engine)}/health/detailed")
    assert code == 503 and d["status"] == "unhealthy"
    assert d["redis"]["error"] and d["queues"] == {} and d["dlq_size"] is None
    assert [x["name"] for x in d["destinations"]] == ["a"]  # what the worker knows without Redis
    assert (await http.get(f"{base(engine)}/health/live")).status_code == 200
    assert (await http.get(f"{base(engine)}/metrics")).status_code == 200


async def test_draining_is_unhealthy(api_token, healthy_sink_settings, start_engine, http) -> None:
    engine = await start_engine(healthy_sink_settings("a"))
    await _ready_when(http, engine, "healthy")
    engine.request_stop("test")
    code, body = await _get(http, f"{base(engine)}/health/ready")
    assert code == 503
    assert body["status"] == "unhealthy" and body["draining"] is True
    resp = await http.post(f"{base(engine)}/api/v1/distributions", headers=auth(),
                           json={"destinations": ["a"], "payload": {}})
    assert resp.status_code == 503
    assert (await http.get(f"{base(engine)}/health/live")).status_code == 200


async def test_a_dead_worker_degrades_only_while_it_holds_entries(api_token, healthy_sink_settings, start_engine,
                                                                  http) -> None:
    engine = await start_engine(healthy_sink_settings("a"))
    await _ready_when(http, engine, "healthy")
    async with engine.pool.connection() as conn:
        for worker, age in (("ghost", "10 minutes"), ("ancient", "2 days")):
            await conn.execute(
                "INSERT INTO worker_heartbeats (worker_id, host, pid, started_at, updated_at, version) "
                "VALUES (%s, 'gone-host', 1, now() - interval '3 days', now() - %s::interval, '0.0.1')",
                (worker, age))
    code, body = await _get(http, f"{base(engine)}/health/ready")
    assert (code, body["checks"]["workers"]) == (200, "healthy")  # crashed long ago, its work taken over

    # The ghost still holds an entry nobody has reclaimed yet: that is worth a degraded.
    stream = keys.stream("default")
    pipe = engine.queue.redis.pipeline(transaction=True)  # one step, so the engine cannot read it first
    pipe.xadd(stream, {"id": str(uuid.uuid4()), "destination": "a", "attempt": "0"})
    pipe.xreadgroup(keys.GROUP, "ghost", {stream: ">"}, count=1)
    await pipe.execute()
    body = await _ready_when(http, engine, "degraded", workers="degraded")
    code, d = await _get(http, f"{base(engine)}/health/detailed")
    ghost = next(w for w in d["workers"] if w["worker_id"] == "ghost")
    assert ghost["stale"] is True and ghost["live"] is False and ghost["pending"] == 1
    assert "ancient" not in {w["worker_id"] for w in d["workers"]}


PROTECTED = [
    ("GET", "/health/ready"),
    ("GET", "/health/detailed"),
    ("GET", "/debug/memory"),
    ("GET", "/api/v1/distributions/8d5f1c9e-0000-4000-8000-000000000000"),
    ("POST", "/api/v1/distributions"),
    ("GET", "/no/such/path"),
]
BAD_HEADERS = [
    {},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": TOKEN},
    {"Authorization": "Bearer"},
]


async def test_token_required_on_every_protected_route(api_token, make_settings, sink: Sink, start_engine,
                                                       http) -> None:
    engine = await start_engine(make_settings(destinations=[{"name": "a", "url": sink.url("/a")}],
                                              service={"debug_memory": True}))
    for method, path in PROTECTED:
        for headers in BAD_HEADERS:
            resp = await http.request(method, base(engine) + path, headers=headers,
                                      json={"destinations": ["a"], "payload": {}} if method == "POST" else None)
            assert resp.status_code == 401, (method, path, headers)
            assert resp.json() == {"error": "unauthorized"}
            assert resp.headers["WWW-Authenticate"] == "Bearer"
        resp = await http.request(method, base(engine) + path, headers={"Authorization": f"bearer {TOKEN}"},
                                  json={"destinations": ["a"], "payload": {}} if method == "POST" else None)
        assert resp.status_code != 401, (method, path)
    for path in ("/health/live", "/metrics"):
        assert (await http.get(base(engine) + path)).status_code == 200


async def test_no_token_configured_means_open(monkeypatch, healthy_sink_settings, start_engine, http) -> None:
    monkeypatch.delenv("MS07_API_TOKEN", raising=False)
    engine = await start_engine(healthy_sink_settings("a"))
    code, body = await _get(http, f"{base(engine)}/health/ready", token=None)
    assert code == 200 and body["version"] == __version__


@pytest.mark.parametrize("enabled", [False, True])
async def test_debug_memory(api_token, make_settings, sink: Sink, start_engine, http, enabled: bool) -> None:
    import tracemalloc

    was_tracing = tracemalloc.is_tracing()
    engine = await start_engine(make_settings(destinations=[{"name": "a", "url": sink.url("/a")}],
                                              service={"debug_memory": enabled}))
    url = f"{base(engine)}/debug/memory"
    if not enabled:
        resp = await http.get(url, headers=auth())
        assert resp.status_code == 404 and "debug_memory" in resp.json()["error"]
        return
    assert tracemalloc.is_tracing()
    code, first = await _get(http, url)
    assert code == 200
    assert first["top"] and first["diff"] == [] and first["previous_snapshot_at"] is None
    assert {"site", "size_bytes", "count"} <= set(first["top"][0])
    assert first["traced_current_bytes"] > 0 and first["rss_bytes"] > 0
    hoard = [bytearray(1024) for _ in range(2000)]  # ~2 MB of new allocations between snapshots
    code, second = await _get(http, url + "?limit=5")
    assert code == 200 and len(second["top"]) <= 5
    assert second["previous_snapshot_at"] == first["timestamp"]
    assert second["diff"] and {"site", "size_diff_bytes", "count_diff", "size_bytes"} <= set(second["diff"][0])
    assert max(d["size_diff_bytes"] for d in second["diff"]) > 1_000_000
    del hoard
    await engine.stop(grace=1)
    assert tracemalloc.is_tracing() == was_tracing  # the engine stops what it started


async def test_a_rotated_api_token_file_takes_effect_without_a_restart(
        tmp_path, monkeypatch, healthy_sink_settings, start_engine, http) -> None:
    from ms07.engine.server import ApiToken

    monkeypatch.delenv("MS07_API_TOKEN", raising=False)
    monkeypatch.setattr(ApiToken, "RECHECK_SECONDS", 0.0)  # every request looks at the file
    token_file = tmp_path / "api-token"
    token_file.write_text("first-token\n")
    engine = await start_engine(healthy_sink_settings(service={"api_token_file": str(token_file)}))
    url = f"{base(engine)}/health/ready"
    assert (await http.get(url, headers=auth("first-token"))).status_code == 200
    assert (await http.get(url)).status_code == 401

    # The kubelet swaps the mounted file; the new token is in force at the next check.
    rotated = tmp_path / "api-token.new"
    rotated.write_text("second-token\n")
    rotated.replace(token_file)

    async def second_accepted() -> bool:
        return (await http.get(url, headers=auth("second-token"))).status_code == 200

    await wait_for(second_accepted, timeout=10, interval=0.1, what="the rotated token accepted")
    assert (await http.get(url, headers=auth("first-token"))).status_code == 401

    # A file that vanishes keeps the last token: the guard never opens by itself.
    token_file.unlink()
    assert (await http.get(url)).status_code == 401
    token_file.write_text("")  # and so does an empty one
    assert (await http.get(url)).status_code == 401
    assert (await http.get(url, headers=auth("second-token"))).status_code == 200
