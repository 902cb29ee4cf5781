"""``recover db-connection`` against the real test PostgreSQL and the fake API."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
from aiohttp import web

from ms07 import recover
from ms07.kube.client import RESTARTED_AT
from tests.k8s_fake import FakeKube
from tests.recover.conftest import audit_lines, audit_rows

DEPLOYMENT = "/apis/apps/v1/namespaces/ms07/deployments/ms07-distributor"


def _multi_host(url: str) -> tuple[str, str]:
    """The test URL with a dead host listed first, as a libpq multi-host URL."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    real = query["host"]
    query["host"] = f"/nonexistent-ms07-socket-dir,{real}"
    query["target_session_attrs"] = "read-write"
    return urlunsplit(parts._replace(query=urlencode(query, safe="/,"))), real


def test_reports_primary_and_restarts_the_rollout(
    cli: Any, fake_kube: FakeKube, database_url: str
) -> None:
    url, real = _multi_host(database_url)
    old = set(fake_kube.pod_names())
    result = cli(
        "recover",
        "db-connection",
        "--yes",
        "--health-url",
        "http://127.0.0.1:9/health/ready",
        env={"MS07_DATABASE_URL": url},
    )
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert f"answered by {real}:" in out and "as primary" in out
    assert "the URL lists 2 hosts: /nonexistent-ms07-socket-dir:" in out
    assert "no standby is connected" in out
    assert "not reachable from here" in out

    [patch] = fake_kube.mutations()
    assert (patch.method, patch.path, patch.content_type) == (
        "PATCH",
        DEPLOYMENT,
        "application/strategic-merge-patch+json",
    )
    stamp = patch.body["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT]
    assert list(patch.body) == ["spec"] and stamp.endswith("Z")
    new = set(fake_kube.ready_pods())
    assert len(new) == 2 and not new & old, "every pod was replaced"
    rows = [
        (r["step_index"], r["outcome"])
        for r in audit_rows(database_url)
        if r["outcome"] != "running"
    ]
    assert rows == [
        (None, "started"),
        (1, "ok"),
        (2, "ok"),
        (3, "ok"),
        (4, "skipped"),
        (None, "completed"),
    ]


async def test_waits_until_health_ready_says_healthy(
    make_settings: Any, fake_kube: FakeKube, sink: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def ready(request: web.Request, n: int) -> web.StreamResponse:
        assert request.headers["Authorization"] == "Bearer the-api-token"
        status, code = [("unhealthy", 503), ("degraded", 200), ("healthy", 200)][min(n, 3) - 1]
        return web.json_response({"status": status, "checks": {"database": status}}, status=code)

    sink.on("/health/ready", ready)
    monkeypatch.setenv("MS07_API_TOKEN", "the-api-token")
    settings = make_settings()
    kube = {"kubeconfig": str(fake_kube.kubeconfig_path), "namespace": "ms07"}
    health = sink.url("/health/ready")
    result = await recover.run(
        "db-connection", settings, yes=True, health_url=health, health_timeout=30, kube_options=kube
    )
    assert result.status == "completed", result.message
    assert (result.steps[3].status, result.steps[3].message) == ("ok", f"{health}: healthy")
    assert result.steps[0].detail["database"]["role"] == "primary"
    assert len(sink.received) == 3

    sink.on("/health/ready", lambda request, n: _json(401, {"error": "unauthorized"}))
    resumed = await recover.run(
        "db-connection", settings, yes=True, health_url=health, from_step=4, kube_options=kube
    )
    assert resumed.status == "failed" and resumed.failed_step == 4
    assert "answered 401: set MS07_API_TOKEN to the engine's token" in resumed.message
    assert [s.status for s in resumed.steps] == ["skipped", "skipped", "skipped", "failed"]
    assert len(fake_kube.mutations()) == 1, "the resumed run did not restart again"


async def _json(code: int, body: dict[str, Any]) -> web.StreamResponse:
    return web.json_response(body, status=code)


def test_database_down_stops_before_the_restart(
    cli: Any, fake_kube: FakeKube, tmp_path: Path
) -> None:
    down = "postgresql://ms07:secret-pw@127.0.0.1:1/ms07"
    result = cli("recover", "db-connection", "--yes", env={"MS07_DATABASE_URL": down})
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert "step 1 (Check that PostgreSQL answers (SELECT 1, timed) and who answered) failed" in out
    assert "a rollout restart cannot help until PostgreSQL answers" in out
    assert "ms07 recover db-connection --from-step 1 --plan-id db-connection-" in out
    assert "secret-pw" not in result.output
    assert fake_kube.mutations() == []
    lines = audit_lines(tmp_path / "state")
    assert [(x["step_index"], x["outcome"]) for x in lines] == [
        (None, "started"),
        (1, "running"),
        (1, "failed"),
        (None, "failed"),
    ]
    assert not any(x["recorded_in_db"] for x in lines)
    assert "secret-pw" not in (tmp_path / "state" / "audit" / "recovery.jsonl").read_text()
    assert "not recorded in recovery_audit" in out


def test_health_url_is_the_engine_base_url_as_elsewhere() -> None:
    """MS07_HEALTH_URL is the engine's base URL for `ms07 health` and `diagnose`; the
    recover plan polls its /health/ready (and still takes the endpoint itself)."""
    from ms07.recover.db_connection import ready_url

    assert ready_url("http://engine:8080") == "http://engine:8080/health/ready"
    assert ready_url("http://engine:8080/") == "http://engine:8080/health/ready"
    assert ready_url("http://engine:8080/health/ready") == "http://engine:8080/health/ready"
    assert ready_url(None) is None
