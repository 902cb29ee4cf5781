"""recover db-connection finds the engine as `ms07 health` does (issue 21: it said 'no
health URL, step skipped' while `ms07 health` found the engine by itself)."""

from __future__ import annotations

from typing import Any

from ms07.recover import db_connection


def test_db_connection_polls_the_engine_ms07_health_would_find(make_settings: Any) -> None:
    settings = make_settings(service={"http_port": 18099})
    assert not settings.health_url
    plan = db_connection.build(settings, db_connection.Options())
    wait = plan.steps[3]
    assert wait.title == "Wait until /health/ready reports healthy"
    assert "http://127.0.0.1:18099/health/ready" in str(wait.command)
    named = db_connection.build(settings, db_connection.Options(health_url="http://engine:9000"))
    assert "http://engine:9000/health/ready" in str(named.steps[3].command)
    assert [s.needs_cluster for s in plan.steps] == [False, False, True, False]
    assert plan.outside_cluster and plan.outside_cluster[0].startswith("ms07 health")
