"""diagnose latency: percentiles per destination, the p95 flag and data-driven remedies."""

from __future__ import annotations

from ms07.diagnose import DiagnoseOptions, run_check_async
from tests.diagnose.conftest import acli, ids, parse, validate_check
from tests.support import destination


async def test_slow_destination_is_flagged_with_percentiles(make_settings, db, cli, config_file) -> None:
    db.attempts("fast", 100, latency_ms=20)
    db.attempts("slow", 90, latency_ms=100)
    db.attempts("slow", 10, latency_ms=1200)
    db.attempts("old", 50, latency_ms=3000, ago=3 * 3600)  # outside the 1h window
    dests = [destination("fast", "http://127.0.0.1:9/in"), destination("slow", "http://127.0.0.1:9/in")]
    settings = make_settings(destinations=dests)
    result = await run_check_async(settings, "latency")
    rows = {s["destination_name"]: s for s in result.details["destinations"]}
    assert set(rows) == {"fast", "slow"}
    assert rows["slow"]["attempts"] == 100 and rows["slow"]["failures"] == 0
    assert abs(rows["slow"]["p50_ms"] - 100) < 5
    assert rows["slow"]["p95_ms"] > 500 and abs(rows["slow"]["max_ms"] - 1200) < 5
    assert abs(rows["fast"]["p95_ms"] - 20) < 5
    p95 = [f for f in result.findings if f.id == "latency.p95_high"]
    assert [f.subject for f in p95] == ["slow"] and p95[0].severity == "warning"
    # Little in flight, no saturation: the destination itself is slow.
    assert "slow itself is slow" in p95[0].remedy and p95[0].command == "ms07 diagnose timeouts"
    chart = next(s for s in result.sections if s.chart)
    assert [(label, over) for label, _, over in chart.chart] == [("slow", True), ("fast", False)]
    assert result.exit_code == 1

    res = await acli(cli, ["diagnose", "latency"], config=config_file(destinations=dests))
    assert res.exit_code == 1
    assert "WARNING latency: slow: p95" in res.stdout.splitlines()[0]
    assert "█" in res.stdout and "\x1b[" not in res.stdout  # bar chart, and NO_COLOR respected
    res = await acli(cli, ["diagnose", "latency", "--json", "--p95-threshold-ms", "2000"],
                     config=config_file(destinations=dests))
    validate_check(parse(res))
    assert res.exit_code == 0 and "latency.p95_high" not in ids(parse(res))


async def test_saturated_pool_asks_for_a_bigger_pool(make_settings, db) -> None:
    db.attempts("busy", 40, latency_ms=900)
    for _ in range(4):
        db.job("busy", "processing", created_ago=30, started_ago=20)
    settings = make_settings(destinations=[destination("busy", "http://127.0.0.1:9/in", timeout_seconds=1,
                                                       pool={"max_connections": 4})])
    result = await run_check_async(settings, "latency")
    f = result.finding("p95_high")
    assert f.severity == "critical"  # p95 900 ms is within 80% of its 1 s timeout
    assert "pool.max_connections" in f.remedy
    active = result.finding("active")
    assert active.summary.startswith("4 active distribution(s)")


async def test_saturated_workers_ask_for_more_replicas(make_settings, db) -> None:
    db.attempts("d", 40, latency_ms=900)
    for i in range(3):
        db.job(f"other-{i}", "processing", created_ago=30, started_ago=20)
    settings = make_settings(destinations=[destination("d", "http://127.0.0.1:9/in")], service={"concurrency": 3})
    f = (await run_check_async(settings, "latency")).finding("p95_high")
    assert f.command.startswith("ms07 recover scale --replicas")


async def test_busy_destination_without_batching(make_settings, db) -> None:
    db.attempts("d", 300, latency_ms=700)
    settings = make_settings(destinations=[destination("d", "http://127.0.0.1:9/in")])
    opts = DiagnoseOptions.from_settings(settings, since_seconds=10.0)
    db.execute("UPDATE distribution_attempts SET started_at = now() - interval '5 seconds', "
               "completed_at = now() - interval '5 seconds' + interval '700 ms'")
    f = (await run_check_async(settings, "latency", opts)).finding("p95_high")
    assert "enable batching" in f.remedy


async def test_failure_rate(make_settings, db) -> None:
    db.attempts("d", 20, latency_ms=10)
    db.attempts("d", 10, latency_ms=10, status="failed", code=503, error_code="HTTP_5XX")
    result = await run_check_async(make_settings(destinations=[destination("d", "http://127.0.0.1:9/in")]), "latency")
    assert result.finding("failure_rate").severity == "warning"
    assert result.finding("failure_rate").summary.startswith("d: 33%")
