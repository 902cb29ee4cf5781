"""JSON logs: the guide's fields (ms07/logs.py) on every line, a distribution's life with its
correlation id, levels, the console format, and redaction."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from typing import Any

import pytest

from ms07 import SERVICE_NAME, logs
from ms07.config import load_settings
from ms07.errors import ConfigError
from tests.observability.conftest import auth, base
from tests.support import Sink, fail_first, status, wait_for

REQUIRED = {"timestamp", "level", "service", "component", "distribution_id", "destination", "error_code",
            "correlation_id", "message", "metadata"}
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
LEVELS = {"DEBUG", "INFO", "WARN", "ERROR", "CRITICAL"}


def parse_lines(text: str) -> list[dict[str, Any]]:
    """Every line must be one JSON object with the guide's fields (ms07/logs.py)."""
    records = []
    for line in text.splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        missing = REQUIRED - set(record)
        assert not missing, (missing, line)
        assert TIMESTAMP.fullmatch(record["timestamp"]), line
        assert record["level"] in LEVELS, line
        assert record["service"] == SERVICE_NAME
        assert isinstance(record["metadata"], dict)
        if "stack_trace" in record:
            assert record["level"] in ("ERROR", "CRITICAL"), line
        records.append(record)
    return records


def test_a_line_has_the_guides_fields(captured_logs: io.StringIO) -> None:
    log = logs.get("DistributionWorker")
    try:
        raise TimeoutError("Connection timed out")
    except TimeoutError:
        log.exception("Failed to connect to destination after 3 attempts", distribution_id="dist-uuid-123",
                      destination="ms09-reporter", error_code="CONNECTION_TIMEOUT", attempt=3, total_attempts=3,
                      last_error="Connection timed out", destination_url="https://ms09.zenia.local/api/reports")
    log.warning("slow", destination="ms09-reporter")
    logging.getLogger("aiohttp.server").error("a library's line")
    [first, second, third] = parse_lines(captured_logs.getvalue())
    assert first["level"] == "ERROR" and first["component"] == "DistributionWorker"
    assert (first["distribution_id"], first["destination"], first["error_code"]) == (
        "dist-uuid-123", "ms09-reporter", "CONNECTION_TIMEOUT")
    assert first["message"] == "Failed to connect to destination after 3 attempts"
    assert "TimeoutError: Connection timed out" in first["stack_trace"]
    assert first["metadata"] == {"attempt": 3, "total_attempts": 3, "last_error": "Connection timed out",
                                 "destination_url": "https://ms09.zenia.local/api/reports"}
    assert second["level"] == "WARN" and "stack_trace" not in second
    assert second["distribution_id"] is None and second["metadata"] == {}
    assert third["component"] == "server" and third["metadata"] == {"logger": "aiohttp.server"}


async def test_bound_correlation_id_follows_into_tasks(captured_logs: io.StringIO) -> None:
    log = logs.get("api")

    async def child() -> None:
        log.info("in a task")

    with logs.bind(correlation_id="corr-1"):
        log.info("in the block")
        await asyncio.create_task(child())
    log.info("after")
    records = parse_lines(captured_logs.getvalue())
    assert [r["correlation_id"] for r in records] == ["corr-1", "corr-1", None]


def test_redaction_everywhere(captured_logs: io.StringIO) -> None:
    secret = 's3"cr\\et-value'  # quotes and backslashes must neither leak nor break the JSON
    logs.register_secret(secret)
    log = logs.get("auth")
    log.warning(f"token endpoint said {secret}", headers={"Authorization": "Bearer abcdefgh12345678",
                                                          "X-API-Key": "key-123456", "Accept": "*/*"},
                url="postgresql://ms07:hunter2-pw@db.local/ms07", dsn="host=db password=hunter3-pw user=x",
                token="tok-1234567", body='{"access_token": "eyJ0eXAiOi.x.y", "expires_in": 60}')
    try:
        raise RuntimeError(f"request failed: Authorization: Basic dXNlcjpwYXNzd29yZA== {secret}")
    except RuntimeError:
        log.exception("boom", destination_url="https://user:pw-in-url@api.example/x?api_key=qs-secret-1&a=1")
    text = captured_logs.getvalue()
    for leaked in (secret, "abcdefgh12345678", "key-123456", "hunter2-pw", "hunter3-pw", "tok-1234567",
                   "eyJ0eXAiOi", "dXNlcjpwYXNzd29yZA", "pw-in-url", "qs-secret-1"):
        assert leaked not in text, leaked
    first, second = parse_lines(text)
    assert first["metadata"]["headers"] == {"Authorization": "***", "X-API-Key": "***", "Accept": "*/*"}
    assert first["metadata"]["url"] == "postgresql://***@db.local/ms07"
    assert first["metadata"]["token"] == "***"
    assert second["metadata"]["destination_url"].endswith("@api.example/x?api_key=***&a=1")


def test_safe_url_drops_credentials() -> None:
    assert logs.safe_url("https://u:p@h.example:8443/a/b?token=t1&x=1") == "https://h.example:8443/a/b?token=***&x=1"
    assert logs.safe_url("https://h.example/in") == "https://h.example/in"


def test_console_format(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.StringIO()
    logs.configure("INFO", "console", stream=buf)
    try:
        logs.get("DistributionWorker").warning("delivery attempt failed", destination="a", attempt=2,
                                               headers={"Authorization": "Bearer zyxwvut98765"})
    finally:
        logs.unconfigure()
    [line] = buf.getvalue().splitlines()
    assert "WARNING" in line and "DistributionWorker" in line and "delivery attempt failed" in line
    assert "destination=a" in line and "attempt=2" in line
    assert "zyxwvut98765" not in line


def test_log_level_from_the_environment() -> None:
    settings = load_settings(environ={"MS07_LOG_LEVEL": "WARNING"})
    assert settings.log_level == "WARNING"
    buf = io.StringIO()
    logs.configure(settings.log_level, "json", stream=buf)
    try:
        logs.get("x").info("hidden")
        logs.get("x").debug("hidden too")
        logs.get("x").warning("shown")
    finally:
        logs.unconfigure()
    assert [r["message"] for r in parse_lines(buf.getvalue())] == ["shown"]
    with pytest.raises(ConfigError, match="log_level"):
        load_settings(environ={"MS07_LOG_LEVEL": "LOUD"})


async def test_a_distributions_life_in_the_logs(captured_logs: io.StringIO, api_token: str, make_settings,
                                               sink: Sink, start_engine, http) -> None:
    sink.on("/flaky", fail_first(1, 503))
    sink.on("/bad", status(400, body="no such report"))
    engine = await start_engine(make_settings(destinations=[
        {"name": "flaky", "url": sink.url("/flaky")}, {"name": "bad", "url": sink.url("/bad")}]))
    resp = await http.post(f"{base(engine)}/api/v1/distributions", headers=auth(),
                           json={"destinations": ["flaky", "bad"], "payload": {"r": 1}, "correlation_id": "corr-42"})
    assert resp.status_code == 202
    ids = {d["destination"]: d["distribution_id"] for d in resp.json()["distributions"]}

    def seen(message: str) -> bool:
        return any(r["message"] == message for r in parse_lines(captured_logs.getvalue()))

    await wait_for(lambda: seen("distribution parked in the DLQ") and len(sink.keys("/flaky")) == 2,
                   what="both outcomes")
    await wait_for(lambda: engine.delivered == 1, what="flaky delivered")
    records = parse_lines(captured_logs.getvalue())
    about = {did: [r for r in records if r["distribution_id"] == did] for did in ids.values()}

    failed = next(r for r in about[ids["flaky"]] if r["message"] == "delivery attempt failed")
    assert failed["level"] == "WARN" and failed["component"] == "DistributionWorker"
    assert (failed["destination"], failed["error_code"], failed["correlation_id"]) == ("flaky", "HTTP_5XX", "corr-42")
    assert failed["metadata"]["attempt"] == 1 and failed["metadata"]["total_attempts"] == 5
    assert failed["metadata"]["last_error"].startswith("HTTP 503")
    assert failed["metadata"]["destination_url"] == sink.url("/flaky")
    retried = next(r for r in about[ids["flaky"]] if r["message"] == "delivery will be retried")
    assert retried["level"] == "DEBUG" and retried["metadata"]["next_attempt_at"]

    parked = next(r for r in about[ids["bad"]] if r["message"] == "distribution parked in the DLQ")
    assert parked["level"] == "ERROR" and parked["error_code"] == "HTTP_4XX"
    assert parked["metadata"]["attempt"] == 1 and parked["metadata"]["total_attempts"] == 5
    assert parked["metadata"]["last_error"] == "HTTP 400: no such report"
    assert parked["metadata"]["destination_url"] == sink.url("/bad")

    # The correlation id ties the API's acceptance to the worker's lines.
    components = {r["component"] for r in records if r["correlation_id"] == "corr-42"}
    assert {"api", "DistributionWorker"} <= components
    accepted = [r for r in records if r["message"] == "distribution accepted"]
    assert {r["distribution_id"] for r in accepted} == set(ids.values())
