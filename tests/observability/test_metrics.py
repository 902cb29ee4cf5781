"""GET /metrics: the guide's names (README.md, "Metrics"), types and labels, values that move, promtool's lint."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from typing import Any

import httpx
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from ms07 import keys
from tests.observability.conftest import base
from tests.support import Sink, status, submit_n, wait_for

# name as the parser reports it (counters lose _total) -> type, label names
EXPECTED = {
    "zenia_distribution_requests": ("counter", {"status"}),
    "zenia_distribution_attempts": ("counter", {"status", "destination"}),
    "zenia_distribution_latency_seconds": ("histogram", {"destination"}),
    "zenia_distribution_queue_depth": ("gauge", {"queue"}),
    "zenia_distribution_active_workers": ("gauge", set()),
    "zenia_distribution_pending": ("gauge", {"queue"}),
    "zenia_distribution_dlq_size": ("gauge", set()),
    "zenia_distribution_delayed": ("gauge", {"queue"}),
    "zenia_distribution_circuit_state": ("gauge", {"destination"}),
    "zenia_distribution_destination_healthy": ("gauge", {"destination"}),
    "zenia_distribution_token_expiry_seconds": ("gauge", {"destination"}),
}
SECRET = "client-secret-9d8e7f6a"


async def token_endpoint(request: web.Request, n: int) -> web.StreamResponse:
    return web.json_response({"access_token": f"access-token-{n}-5c4b3a29", "expires_in": 3600,
                              "token_type": "Bearer"})


async def scrape(http: httpx.AsyncClient, engine: Any) -> tuple[str, dict[str, Any]]:
    resp = await http.get(f"{base(engine)}/metrics")  # open even with a token configured
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    return resp.text, {f.name: f for f in text_string_to_metric_families(resp.text)}


def value(families: dict[str, Any], sample_name: str, **labels: str) -> float:
    family = families[sample_name.removesuffix("_total").removesuffix("_count")]
    for s in family.samples:
        if s.name == sample_name and s.labels == labels:
            return float(s.value)
    raise AssertionError(f"no sample {sample_name}{labels}")


async def _statuses(engine: Any) -> dict[str, int]:
    async with engine.pool.connection() as conn:
        cur = await conn.execute("SELECT status, count(*) FROM distribution_jobs GROUP BY status")
        return dict(await cur.fetchall())


async def _live_heartbeat(engine: Any) -> bool:
    return bool(await engine.queue.redis.exists(keys.heartbeat(engine.worker_id)))


@pytest.fixture
def settings(make_settings, sink: Sink, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("OBS_CLIENT_SECRET", SECRET)
    sink.on("/token", token_endpoint)
    sink.on("/p", status(400))
    sink.on("/r", status(503))
    return make_settings(destinations=[
        {"name": "a", "url": sink.url("/a"), "health_url": sink.url("/a/health")},
        {"name": "o", "url": sink.url("/o"),
         "auth": {"type": "oauth2_client_credentials", "token_url": sink.url("/token"), "client_id": "ms07",
                  "client_secret_env": "OBS_CLIENT_SECRET"}},
        {"name": "p", "url": sink.url("/p")},
        {"name": "r", "url": sink.url("/r"), "retry_base_delay_seconds": 60, "max_retry_delay": 60},
        {"name": "h", "url": sink.url("/h"), "health_url": sink.url("/h/down")},
    ])


async def test_every_metric_with_its_type_and_labels_and_values_that_move(
        settings, sink: Sink, start_engine, http) -> None:
    sink.on("/h/down", status(503))
    release = asyncio.Event()

    async def held(request: web.Request, n: int) -> web.StreamResponse:
        await release.wait()
        return web.Response(text="late")

    sink.on("/h", held)
    engine = await start_engine(settings)
    await wait_for(lambda: _live_heartbeat(engine), what="heartbeat")
    _, before = await scrape(http, engine)
    # Zero-valued series exist from the first scrape, so rate() works from the start.
    assert value(before, "zenia_distribution_requests_total", status="success") == 0
    assert value(before, "zenia_distribution_attempts_total", status="success", destination="a") == 0
    assert value(before, "zenia_distribution_latency_seconds_count", destination="a") == 0

    await submit_n(engine, "a", 5)
    await submit_n(engine, "o", 2)
    await submit_n(engine, "p", 1)
    await submit_n(engine, "r", 1)
    await wait_for(lambda: _has(engine, delivered=7, failed=1, retrying=1), what="outcomes committed")
    await submit_n(engine, "h", 1)
    await wait_for(lambda: sink.counts["/h"] == 1, what="a delivery in flight")
    assert engine.upkeep is not None
    await engine.upkeep.refresh_metrics()  # the 5 s loop's work, now
    text, after = await scrape(http, engine)

    for name, (kind, labels) in EXPECTED.items():
        family = after.get(name)
        assert family is not None, f"{name} missing"
        assert family.type == kind, (name, family.type)
        assert family.samples, f"{name} has no samples"
        for s in family.samples:
            assert set(s.labels) - {"le"} == labels, (name, s.labels)
        assert family.documentation

    assert value(after, "zenia_distribution_requests_total", status="success") == 7
    assert value(after, "zenia_distribution_requests_total", status="failed") == 1
    assert value(after, "zenia_distribution_attempts_total", status="success", destination="a") == 5
    assert value(after, "zenia_distribution_attempts_total", status="success", destination="o") == 2
    assert value(after, "zenia_distribution_attempts_total", status="failed", destination="p") == 1
    assert value(after, "zenia_distribution_attempts_total", status="failed", destination="r") == 1
    assert value(after, "zenia_distribution_latency_seconds_count", destination="a") == 5
    assert value(after, "zenia_distribution_dlq_size") == 1
    assert value(after, "zenia_distribution_delayed", queue="default") == 1
    assert value(after, "zenia_distribution_pending", queue="default") == 1  # the hanging delivery
    assert value(after, "zenia_distribution_queue_depth", queue="default") == 1
    assert value(after, "zenia_distribution_active_workers") >= 1
    assert value(after, "zenia_distribution_circuit_state", destination="a") == 0
    assert value(after, "zenia_distribution_destination_healthy", destination="a") == 1
    assert value(after, "zenia_distribution_destination_healthy", destination="h") == 0
    assert 3500 < value(after, "zenia_distribution_token_expiry_seconds", destination="o") <= 3600
    assert value(after, "process_resident_memory_bytes") > 0
    assert "access-token-" not in text and SECRET not in text
    release.set()
    await wait_for(lambda: _has(engine, delivered=8), what="the held delivery done")


async def _has(engine: Any, **expected: int) -> bool:
    got = await _statuses(engine)
    return all(got.get(k, 0) == v for k, v in expected.items())


async def test_circuit_state_follows_the_breaker(make_settings, sink: Sink, start_engine, http) -> None:
    sink.on("/b", status(500))
    engine = await start_engine(make_settings(destinations=[
        {"name": "b", "url": sink.url("/b"), "circuit_breaker": {"failure_threshold": 1, "recovery_timeout": 60}}]))
    await submit_n(engine, "b")
    await wait_for(lambda: engine.breakers["b"].state == "open", what="circuit open")
    _, families = await scrape(http, engine)
    assert value(families, "zenia_distribution_circuit_state", destination="b") == 2


async def test_promtool_check_metrics(settings, sink: Sink, start_engine, http) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    sink.on("/h/down", status(503))
    engine = await start_engine(settings)
    await submit_n(engine, "a", 2)
    await submit_n(engine, "o", 1)
    await submit_n(engine, "p", 1)
    await wait_for(lambda: _has(engine, delivered=3, failed=1), what="outcomes committed")
    assert engine.upkeep is not None
    await engine.upkeep.refresh_metrics()
    text, _ = await scrape(http, engine)
    result = await asyncio.to_thread(
        subprocess.run, [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30,
        check=False)
    print(f"promtool check metrics: exit {result.returncode}, {len(text.splitlines())} lines checked",
          result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr
