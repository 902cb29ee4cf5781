"""Log lines an operator acts on carry ``console``: the console page of their subject
(a parked distribution, a destination whose circuit opened), prefixed with
``service.console_url`` when it is set (issue 22)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from ms07 import logs
from ms07.config import load_settings
from ms07.errors import ConfigError
from tests.observability.test_logs import parse_lines
from tests.support import Sink, status, submit_n, wait_for


@pytest.fixture(autouse=True)
def _no_console_url_after() -> Iterator[None]:
    yield
    logs.set_console_url(None)  # the next engine sets its own; nothing else reads it


@pytest.mark.parametrize("console_url", [None, "https://ms07.example.com/"])
async def test_a_parked_job_and_an_open_circuit_link_to_their_pages(
        console_url: str | None, captured_logs: io.StringIO, make_settings, sink: Sink, start_engine) -> None:
    sink.on("/bad", status(400, body="no such report"))
    sink.on("/down", status(503))
    service = {"console_url": console_url} if console_url else {}
    engine = await start_engine(make_settings(
        service=service,
        destinations=[{"name": "bad", "url": sink.url("/bad")},
                      {"name": "down", "url": sink.url("/down"), "circuit_breaker": {"failure_threshold": 1}}],
        distribution={"max_attempts": 2}))
    [bad] = await submit_n(engine, "bad")
    await submit_n(engine, "down")

    def line(message: str) -> dict | None:
        return next((r for r in parse_lines(captured_logs.getvalue()) if r["message"] == message), None)

    await wait_for(lambda: line("distribution parked in the DLQ") is not None
                   and line("circuit breaker changed state") is not None, what="the parked job and the breaker")
    prefix = "https://ms07.example.com" if console_url else ""
    parked = line("distribution parked in the DLQ")
    assert parked is not None and parked["distribution_id"] == bad
    assert parked["metadata"]["console"] == f"{prefix}/console/distributions/{bad}"
    opened = line("circuit breaker changed state")
    assert opened is not None and (opened["destination"], opened["metadata"]["state"]) == ("down", "open")
    assert opened["metadata"]["console"] == f"{prefix}/console/destinations/down"
    # Only the lines an operator acts on: a failed attempt carries no link.
    failed = line("delivery attempt failed")
    assert failed is not None and "console" not in failed["metadata"]


def test_console_link_quotes_the_segments() -> None:
    logs.set_console_url("http://127.0.0.1:8080")
    assert logs.console_link("destinations", "a/b c") == "http://127.0.0.1:8080/console/destinations/a%2Fb%20c"
    logs.set_console_url(None)
    assert logs.console_link("dlq") == "/console/dlq"


@pytest.mark.parametrize("url", ["https://ms07.example.com", "http://127.0.0.1:8080/", "https://ops.example.com:8443"])
def test_a_console_url_is_a_base_url(url: str, tmp_path: Path) -> None:
    path = tmp_path / "ms07.yaml"
    path.write_text(f"service:\n  console_url: {url}\n")
    assert load_settings(path, environ={}).service.console_url == url


@pytest.mark.parametrize(("url", "why"), [
    ("https://ms07.example.com/console", "no path, query or fragment"),
    ("https://ms07.example.com/?a=1", "no path, query or fragment"),
    ("https://ms07.example.com#top", "no path, query or fragment"),
    ("ms07.example.com", "has no scheme"),
    ("ftp://ms07.example.com", "is not an http(s) URL"),
    ("https://admin:hunter2@ms07.example.com", "credentials in the URL are not allowed"),
])
def test_a_bad_console_url_is_one_clear_line(url: str, why: str, tmp_path: Path) -> None:
    path = tmp_path / "ms07.yaml"
    path.write_text(f"service:\n  console_url: '{url}'\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={})
    message = str(err.value)
    assert "\n" not in message and "service.console_url" in message and why in message
    assert "(line 2)" in message and "hunter2" not in message
    with pytest.raises(ConfigError, match=r"MS07_SERVICE__CONSOLE_URL: service.console_url"):
        load_settings(None, environ={"MS07_SERVICE__CONSOLE_URL": url})
