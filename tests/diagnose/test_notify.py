"""--notify: findings as Alertmanager v2 alerts, posted to a real loopback server."""

from __future__ import annotations

import json

import redis

from ms07 import keys
from ms07.diagnose import run_checks_async
from ms07.diagnose.notify import build_alerts, endpoint, notify
from tests.diagnose.conftest import acli
from tests.support import status


def evicting(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    r.config_set("maxmemory-policy", "allkeys-lru")
    r.xgroup_create(keys.stream("default"), keys.GROUP, id="0", mkstream=True)
    r.close()


async def test_notify_posts_critical_findings_in_alertmanager_shape(
    db, redis_url, sink, cli, config_file
) -> None:
    evicting(redis_url)
    lost = db.job("d1", "queued", created_ago=900)
    db.execute(
        "INSERT INTO worker_heartbeats (worker_id, host, pid, started_at, updated_at, version) "
        "VALUES ('w-stale', 'h', 1, now(), now() - interval '10 minutes', 'x')"
    )
    cfg = config_file(
        escalation={"alertmanager_url": sink.url("/"), "teams": {"queue": "platform"}}
    )
    res = await acli(cli, ["diagnose", "queue", "--notify"], config=cfg)
    assert res.exit_code == 2
    assert f"notified: 2 alert(s) to {sink.url('/api/v2/alerts')}" in res.stderr
    [post] = [r for r in sink.received if r.path == "/api/v2/alerts"]
    assert post.headers["Content-Type"] == "application/json"
    alerts = json.loads(post.body)
    by_finding = {a["labels"]["finding"]: a for a in alerts}
    assert set(by_finding) == {
        "queue.maxmemory_policy",
        "queue.lost_messages",
    }  # min_severity: critical
    a = by_finding["queue.lost_messages"]
    assert a["labels"] == {
        "alertname": "MS07DiagnoseQueue",
        "service": "ms07-distributor",
        "check": "queue",
        "finding": "queue.lost_messages",
        "severity": "critical",
        "priority": "P1",
        "team": "platform",
    }
    assert a["annotations"]["runbook"] == "queue-message-loss"
    assert a["annotations"]["command"] == "ms07 recover requeue-from-db"
    assert (
        lost in a["annotations"]["description"]
        and a["annotations"]["summary"]
        and a["annotations"]["remedy"]
    )
    assert a["startsAt"].endswith("Z")


async def test_min_severity_and_priorities_come_from_config(
    make_settings, db, redis_url, sink
) -> None:
    evicting(redis_url)
    db.execute(
        "INSERT INTO worker_heartbeats (worker_id, host, pid, started_at, updated_at, version) "
        "VALUES ('w-stale', 'h', 1, now(), now() - interval '10 minutes', 'x')"
    )
    # A warning of the queue check (a silent worker holding nothing is only INFO now).
    r = redis.Redis.from_url(redis_url)
    r.xadd(keys.DLQ, {"distribution_id": "x", "reason": "permanent_failure"})
    r.close()
    settings = make_settings(
        escalation={
            "alertmanager_url": sink.url("/api/v2/alerts"),
            "min_severity": "warning",
            "priorities": {"critical": "P2", "warning": "P3", "info": "P4"},
        }
    )
    report = await run_checks_async(settings, ["queue"])
    alerts = build_alerts(settings, report)
    assert {(a["labels"]["finding"], a["labels"]["priority"]) for a in alerts} == {
        ("queue.maxmemory_policy", "P2"),
        ("queue.dlq", "P3"),
    }
    assert all(
        a["labels"]["team"] == "backend" for a in alerts
    )  # the guide's matrix (README.md, "Diagnose"): queue -> backend
    sent = await notify(settings, report)
    assert sent.alerts == 2 and sent.url == sink.url("/api/v2/alerts")
    assert endpoint("http://am:9093/") == "http://am:9093/api/v2/alerts"


async def test_refused_notify_keeps_the_verdict(db, redis_url, sink, cli, config_file) -> None:
    evicting(redis_url)
    sink.on("/api/v2/alerts", status(500))
    res = await acli(
        cli,
        ["diagnose", "queue", "--notify"],
        config=config_file(escalation={"alertmanager_url": sink.url("/")}),
    )
    assert res.exit_code == 2  # CRITICAL stays the exit code
    assert "error: " in res.stderr and "answered HTTP 500" in res.stderr
