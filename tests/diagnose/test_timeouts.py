"""diagnose timeouts: stuck jobs, a closed port, a hanging destination, timeout attempts."""

from __future__ import annotations

import socket
import time

from ms07.diagnose import DiagnoseOptions, run_check_async
from tests.diagnose.conftest import acli, ids, parse, validate_check
from tests.support import destination, hang


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_stuck_jobs_closed_port_and_hanging_destination(make_settings, sink, db, cli, config_file) -> None:
    port = closed_port()
    sink.on("/health", hang(30))
    dests = [
        destination("closed", f"http://127.0.0.1:{port}/in", health_url=f"http://127.0.0.1:{port}/health"),
        destination("hanging", sink.url("/in"), health_url=sink.url("/health")),
    ]
    stuck = [db.job("closed", "processing", created_ago=3600, started_ago=2400) for _ in range(3)]
    db.job("closed", "processing", created_ago=3600, started_ago=5)  # lease fresh: being worked on
    db.attempts("hanging", 4, status="failed", code=None, error_code="READ_TIMEOUT", latency_ms=5000)
    db.attempts("closed", 2, status="failed", code=None, error_code="CONNECTION_TIMEOUT", latency_ms=5000)
    settings = make_settings(destinations=dests)
    t0 = time.monotonic()
    result = await run_check_async(settings, "timeouts",
                                   DiagnoseOptions.from_settings(settings, probe_timeout_seconds=1.0))
    elapsed = time.monotonic() - t0
    assert elapsed < 4, f"probes must run concurrently ({elapsed:.1f}s)"
    found = {f.id: f for f in result.findings}
    assert found["timeouts.stuck_jobs"].severity == "critical"
    assert found["timeouts.stuck_jobs"].summary.startswith("3 job(s)")
    assert (stuck[0] in found["timeouts.stuck_jobs"].evidence
            or any(s in found["timeouts.stuck_jobs"].evidence for s in stuck))
    assert found["timeouts.stuck_jobs"].command == "ms07 recover reclaim-pending"
    assert found["timeouts.probe_unreachable"].severity == "critical"
    assert "closed: TCP" in found["timeouts.probe_unreachable"].evidence
    assert found["timeouts.probe_unreachable"].remedy.startswith("TCP refused")
    assert found["timeouts.probe_timeout"].severity == "critical"
    assert "hanging" in found["timeouts.probe_timeout"].evidence
    assert found["timeouts.timeout_attempts"].severity == "warning"
    assert "READ_TIMEOUT=4" in found["timeouts.timeout_attempts"].evidence
    assert found["timeouts.health_check_stale"].severity == "warning"  # no engine ever probed them
    assert result.status == "critical" and result.exit_code == 2
    probes = {p["url"]: p for p in result.details["probes"]}
    assert probes[f"http://127.0.0.1:{port}/health"]["failed_stage"] == "tcp"
    assert probes[sink.url("/health")]["failed_stage"] == "http"

    cfg = config_file(destinations=dests)
    res = await acli(cli, ["diagnose", "timeouts", "--json", "--probe-timeout", "1"], config=cfg)
    assert res.exit_code == 2, res.output
    data = parse(res)
    validate_check(data)
    assert data["status"] == "critical"
    assert ids(data)["timeouts.stuck_jobs"] == "critical"
    assert ids(data)["timeouts.probe_timeout"] == "critical"


async def test_open_circuit_and_unhealthy_destination(make_settings, sink, db, redis_url) -> None:
    import redis

    from ms07 import keys

    dests = [destination("d1", sink.url("/in"), health_url=sink.url("/health"), timeout_seconds=2,
                         circuit_breaker={"failure_threshold": 3})]
    settings = make_settings(destinations=dests)
    db.execute("INSERT INTO destinations (name, url, health_url, health_status, last_health_check, "
               "last_health_error, circuit_state) VALUES ('d1', %s, %s, 'unhealthy', now(), 'HTTP 503', 'open')",
               (sink.url("/in"), sink.url("/health")))
    client = redis.Redis.from_url(redis_url)
    client.hset(keys.circuit("d1"), mapping={"state": "open", "changed_at": time.time() - 30})
    client.close()
    result = await run_check_async(settings, "timeouts")
    assert result.finding("circuit_open").severity == "critical"
    assert result.finding("destination_unhealthy").severity == "warning"
    assert result.finding("probes_ok") is not None  # it answers now
    assert result.finding("health_check_stale") is None
    table = next(s for s in result.sections if s.title.startswith("effective settings"))
    assert table.rows[0][:2] == ["d1", "2s"] and "3 failures" in table.rows[0][5] and table.rows[0][6] == "open"
    assert result.exit_code == 2


async def test_healthy_timeouts(make_settings, sink, db) -> None:
    settings = make_settings(destinations=[destination("d1", sink.url("/in"), health_url=sink.url("/health"))])
    db.execute("INSERT INTO destinations (name, url, health_url, health_status, last_health_check) "
               "VALUES ('d1', %s, %s, 'healthy', now())", (sink.url("/in"), sink.url("/health")))
    db.job("d1", "processing", created_ago=10, started_ago=5)
    result = await run_check_async(settings, "timeouts")
    assert result.status == "healthy", [f.as_json() for f in result.findings]
    assert {f.severity for f in result.findings} == {"info"}


async def test_diagnose_reports_what_the_engine_applies(make_settings, sink, start_engine) -> None:
    """One destination overriding everything (a connect timeout above its timeout, a partial
    breaker), one overriding nothing: the settings table of ``diagnose timeouts`` and the
    pool table of ``diagnose latency`` show what the running engine uses, value for value."""
    from ms07.ops.destinations import listing
    from ms07.runtime import Runtime

    settings = make_settings(
        distribution={"timeout_seconds": 4, "connect_timeout_seconds": 3, "max_attempts": 6,
                      "retry_base_delay_seconds": 0.5, "retry_backoff_multiplier": 3, "max_retry_delay": 9},
        circuit_breaker={"failure_threshold": 8, "recovery_timeout": 40},
        destinations=[
            destination("own", sink.url("/own"), timeout_seconds=2, connect_timeout_seconds=7, max_attempts=3,
                        retry_base_delay_seconds=0.25, retry_backoff_multiplier=1.5, max_retry_delay=2,
                        circuit_breaker={"failure_threshold": 2}),
            destination("global", sink.url("/global")),
        ])
    engine = await start_engine(settings)

    def engine_view(name: str) -> list[str]:
        client, breaker, policy = engine.clients[name], engine.breakers[name], engine.policies[name]
        return [name, f"{client.timeout:g}s", f"{client.connect_timeout:g}s",
                f"{policy.base:g}s x{policy.multiplier:g}^n <= {policy.max_delay:g}s", str(policy.max_attempts),
                f"{breaker.failure_threshold} failures / {breaker.recovery_timeout:g}s"]

    assert engine_view("own") == ["own", "2s", "2s", "0.25s x1.5^n <= 2s", "3", "2 failures / 40s"]
    assert engine_view("global") == ["global", "4s", "3s", "0.5s x3^n <= 9s", "6", "8 failures / 40s"]
    result = await run_check_async(settings, "timeouts")
    table = next(s for s in result.sections if s.title.startswith("effective settings"))
    assert {row[0]: row[:6] for row in table.rows} == {"own": engine_view("own"), "global": engine_view("global")}

    latency = await run_check_async(settings, "latency")
    pools = next(s for s in latency.sections if s.title.startswith("pool limits"))
    assert {row[0]: row[-1] for row in pools.rows} == {n: f"{engine.clients[n].timeout:g}s" for n in ("own", "global")}
    async with Runtime(settings) as rt:
        listed = {d["name"]: d["timeout_seconds"] for d in await listing(rt)}
    assert listed == {n: engine.clients[n].timeout for n in ("own", "global")}
