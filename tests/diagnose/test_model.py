"""The findings model, statuses, exit codes and durations."""

from __future__ import annotations

import pytest

from ms07.diagnose import CheckResult, DiagnoseUsageError, Report, parse_duration, worst
from ms07.diagnose.model import fmt_duration


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("30m", 1800),
        ("2h", 7200),
        ("1d", 86400),
        ("90s", 90),
        ("1h30m", 5400),
        ("1w", 604800),
        (" 2H ", 7200),
        ("0.5h", 1800),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "m", "1x", "-1h", "0m", "1h 30m", "2 years", "400d"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(DiagnoseUsageError) as err:
        parse_duration(text)
    assert err.value.exit_code == 3


def test_status_order_is_monitoring_plugins_max_state_alt() -> None:
    assert worst() == "healthy"
    assert worst("healthy", "unknown") == "unknown"
    assert worst("unknown", "warning") == "warning"
    assert worst("critical", "unknown", "warning") == "critical"


def test_result_status_exit_code_and_json() -> None:
    r = CheckResult("queue")
    assert (r.status, r.exit_code) == ("healthy", 0)
    r.add("depth", "info", "0 entries")
    assert r.exit_code == 0
    r.not_checked("redis", "streams", "connection refused")
    r.not_checked("redis", "lost messages", "connection refused")
    assert (r.status, r.exit_code) == ("unknown", 3)
    [u] = [f for f in r.findings if f.unknown]
    assert (
        u.id == "queue.redis_unavailable"
        and u.summary == "redis unreachable; not checked: streams, lost messages"
    )
    r.add("stale_workers", "warning", "1 stale")
    assert (r.status, r.exit_code) == ("warning", 1)
    r.add("lost_messages", "critical", "1 lost", subject="x")
    assert (r.status, r.exit_code) == ("critical", 2)
    assert r.as_json()["findings"][-1] == {
        "id": "queue.lost_messages",
        "severity": "critical",
        "summary": "1 lost",
        "evidence": "",
        "remedy": "",
        "command": "",
    }
    report = Report([r, CheckResult("auth")])
    assert report.exit_code == 2 and report.as_json()["status"] == "critical"
    with pytest.raises(ValueError):
        r.add("x", "fatal", "no such severity")


def test_fmt_duration() -> None:
    assert [fmt_duration(s) for s in (0.25, 5, 90, 1800, 3660, 7200, 90000, None)] == [
        "250ms",
        "5.0s",
        "1m30s",
        "30m",
        "1h01m",
        "2h",
        "1d01h",
        "-",
    ]
