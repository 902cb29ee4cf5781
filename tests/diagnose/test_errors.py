"""diagnose errors: why attempts fail, per destination and class, with the command that shows more."""

from __future__ import annotations

from ms07.diagnose import run_check_async
from tests.diagnose.conftest import acli, ids, parse, validate_check
from tests.support import destination


async def test_each_class_of_failure_gets_its_own_next_command(make_settings, db, cli, config_file) -> None:
    # The staged incident: one receiver failing half the time with 503, one port closed.
    db.attempts("half", 10, latency_ms=900)
    db.attempts("half", 10, latency_ms=900, status="failed", code=503, error_code="HTTP_5XX",
                message="HTTP 503: upstream overloaded")
    db.attempts("closed", 6, status="failed", code=None, error_code="CONNECTION_ERROR",
                message="cannot connect: [Errno 111] Connection refused")
    db.attempts("strict", 30, latency_ms=10)
    db.attempts("strict", 2, status="failed", code=422, error_code="HTTP_4XX", message="HTTP 422: bad field")
    db.attempts("locked", 5, status="failed", code=401, error_code="AUTHENTICATION_FAILED", message="HTTP 401")
    db.attempts("slowpoke", 4, status="failed", code=None, error_code="READ_TIMEOUT", message="no response")
    db.attempts("slowpoke", 1, latency_ms=10)
    db.attempts("half", 50, status="failed", code=500, error_code="HTTP_5XX", ago=3 * 3600)  # outside 1h
    dests = [destination(n, "http://127.0.0.1:9/in") for n in ("half", "closed", "strict", "locked", "slowpoke")]
    result = await run_check_async(make_settings(destinations=dests), "errors")
    by = {f.subject: f for f in result.findings if f.subject}

    half = by["half"]
    assert half.id == "errors.failures" and half.severity == "warning"
    assert half.summary == "half: 10 of 20 attempts failed with HTTP_5XX 503 in the last 1h"
    assert "receiver's side" in half.remedy and "ms07 dlq replay --all" in half.remedy
    assert half.command == "ms07 dlq list"
    assert "latest: HTTP 503: upstream overloaded" in half.evidence and "first " in half.evidence

    closed = by["closed"]
    assert closed.id == "errors.destination_down" and closed.severity == "critical"
    assert closed.summary.endswith("and none succeeded")
    assert closed.command == "ms07 destinations check closed"

    assert by["strict"].severity == "info" and by["strict"].command.startswith("ms07 status ")
    assert by["locked"].command == "ms07 diagnose auth --since 1h"
    assert by["slowpoke"].command == "ms07 diagnose timeouts --since 1h"
    # A destination that is down comes first: it is what matters most after nothing delivering.
    assert result.findings[0].subject == "closed"
    assert result.exit_code == 2

    table = next(s for s in result.sections if s.title.startswith("failed attempts"))
    assert ["half", "HTTP_5XX", "503"] == table.rows[0][:3] or any(r[:3] == ["half", "HTTP_5XX", "503"]
                                                                    for r in table.rows)

    res = await acli(cli, ["diagnose", "errors", "--json"], config=config_file(destinations=dests))
    data = parse(res)
    validate_check(data)
    assert res.exit_code == 2 and ids(data)["errors.destination_down"] == "critical"


async def test_no_failure_is_healthy(make_settings, db) -> None:
    db.attempts("d", 5)
    result = await run_check_async(make_settings(destinations=[destination("d", "http://127.0.0.1:9/in")]), "errors")
    assert result.status == "healthy" and result.finding("none").summary == "no failed attempt in the last 1h"


async def test_latency_failure_rate_points_at_a_check_that_shows_why(make_settings, db) -> None:
    """The 'see X' hint of diagnose latency leads to a check that shows the 5xx (issue 21)."""
    db.attempts("d", 10, latency_ms=10)
    db.attempts("d", 10, latency_ms=10, status="failed", code=503, error_code="HTTP_5XX")
    settings = make_settings(destinations=[destination("d", "http://127.0.0.1:9/in")])
    hint = (await run_check_async(settings, "latency")).finding("failure_rate")
    assert hint.command == "ms07 diagnose errors --since 1h"
    shown = (await run_check_async(settings, "errors")).findings
    assert any("HTTP_5XX 503" in f.summary for f in shown)
    timeouts = await run_check_async(settings, "timeouts")
    assert not any("503" in f.summary for f in timeouts.findings)  # why the old hint misled
