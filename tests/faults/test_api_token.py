"""The API token: every /health/* route but live, every /api/* and /debug/* route refuses a
missing or wrong token with 401 and nothing more; no spelling of a path gets past it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from ms07.engine.server import build_app
from ms07.errors import ConfigError
from tests.support import EngineProcess, Sink, destination, write_config

pytestmark = pytest.mark.faults

TOKEN = "api-T0ken-4a7f9c2e-never-print-me"


def _protected(path: str) -> bool:
    return path.startswith(("/api/", "/debug/")) or (path.startswith("/health/") and path != "/health/live")


async def raw(port: int, method: str, path: str, headers: dict[str, str] | None = None,
              body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request with the path sent exactly as given (no client normalisation)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close",
             f"Content-Length: {len(body)}", *[f"{k}: {v}" for k, v in (headers or {}).items()]]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, content = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    answer = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    if answer.get("transfer-encoding") == "chunked":
        content = _unchunk(content)
    return int(status_line.split()[1]), answer, content


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size, _, rest = data.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out, data = out + rest[:n], rest[n + 2:]
    return out


@pytest.fixture
async def engine(make_settings, sink: Sink, start_engine, monkeypatch) -> Any:
    monkeypatch.setenv("MS07_API_TOKEN", TOKEN)
    # debug_memory stays off: /debug/memory with the token would start tracemalloc for the
    # rest of the session. Off, the route still exists and still sits behind the token.
    return await start_engine(make_settings(destinations=[destination("a", sink.url("/in"))]))


WRONG = {
    "missing": {},
    "empty": {"Authorization": ""},
    "no scheme": {"Authorization": TOKEN},
    "basic": {"Authorization": f"Basic {TOKEN}"},
    "prefix": {"Authorization": f"Bearer {TOKEN[:-1]}"},
    "longer": {"Authorization": f"Bearer {TOKEN}x"},
    "other token": {"Authorization": "Bearer not-the-token"},
    "in another header": {"X-Api-Token": TOKEN},
}


async def test_every_protected_route_refuses_a_missing_or_wrong_token(engine) -> None:
    routes = sorted({(r.method, r.resource.canonical) for r in build_app(engine).router.routes()
                     if r.resource is not None})
    protected = [(m, p.replace("{distribution_id}", "00000000-0000-0000-0000-000000000000"))
                 for m, p in routes if _protected(p)]
    assert {p for _, p in protected} >= {"/health/ready", "/health/detailed", "/api/v1/distributions",
                                         "/debug/memory"}
    for method, path in protected:
        body = b'{"destinations": ["a"], "payload": {}}' if method == "POST" else b""
        for why, headers in WRONG.items():
            status, answer, content = await raw(engine.http_port, method, path, headers, body)
            assert status == 401, (method, path, why, status)
            assert answer["content-type"].startswith("application/json")
            if method != "HEAD":
                assert json.loads(content) == {"error": "unauthorized"}, (method, path, why)
        status, _, _ = await raw(engine.http_port, method, path, {"Authorization": f"Bearer {TOKEN}"}, body)
        assert status != 401, (method, path)
    # Open by design: the liveness probe and the Prometheus scrape.
    assert (await raw(engine.http_port, "GET", "/health/live"))[0] == 200
    assert (await raw(engine.http_port, "GET", "/metrics"))[0] == 200


TRICKS = [
    "/health/ready/", "/health//ready", "//health/ready", "/health/./ready", "/health/live/../ready",
    "/health/live/%2e%2e/ready", "/health/live%2f..%2fready", "/%68ealth/ready", "/health/%72eady",
    "/HEALTH/READY", "/health/ready?x=/health/live", "/health/ready;x", "/api/v1/distributions/../../health/detailed",
    "/metrics/../health/detailed", "/health/live/../../debug/memory", "/debug//memory", "/api/v1//distributions",
    "/health/ready%00", "/health/ready%20", "http://127.0.0.1/health/ready", "/api/v1/nope", "/debug/nope",
    "/health/nope",
]


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE", "OPTIONS"])
async def test_no_spelling_of_a_path_reaches_a_protected_handler_without_the_token(engine, method: str) -> None:
    for path in TRICKS:
        status, _, content = await raw(engine.http_port, method, path)
        if status == 401:
            assert json.loads(content) == {"error": "unauthorized"}, (method, path)
            continue
        # Not refused: then it must not be a protected handler either (404/405/400).
        assert status in (400, 404, 405), (method, path, status, content[:200])
        with_token, _, _ = await raw(engine.http_port, method, path, {"Authorization": f"Bearer {TOKEN}"})
        assert with_token == status, (method, path, status, with_token)


# --------------------------------------------------------------------------- token sources

def _sources(tmp_path: Path) -> dict[str, tuple[dict[str, str], str | None]]:
    """Careless token sources: (environment, service.api_token_file) of each."""
    empty, blank, good, folder = tmp_path / "empty", tmp_path / "blank", tmp_path / "good", tmp_path / "dir"
    empty.write_text("")
    blank.write_text("  \n\t\n")
    good.write_text(TOKEN + "\n")
    folder.mkdir()
    return {
        "empty file": ({}, str(empty)),
        "blank file": ({}, str(blank)),
        "missing file": ({}, str(tmp_path / "nope")),
        "a directory": ({}, str(folder)),
        "empty variable": ({"MS07_API_TOKEN": ""}, None),
        "blank variable": ({"MS07_API_TOKEN": "  "}, None),
        "empty variable beside a good file": ({"MS07_API_TOKEN": ""}, str(good)),
    }


SOURCES = [
    "empty file", "blank file", "missing file", "a directory", "empty variable", "blank variable",
    "empty variable beside a good file"]


@pytest.mark.parametrize("allow", [False, True], ids=["auth required", "unauthenticated allowed"])
@pytest.mark.parametrize("case", SOURCES)
async def test_an_empty_or_unreadable_token_source_refuses_to_start(make_settings, sink: Sink, start_engine,
                                                                     monkeypatch, tmp_path: Path, case: str,
                                                                     allow: bool) -> None:
    env, path = _sources(tmp_path)[case]
    monkeypatch.delenv("MS07_API_TOKEN", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    service: dict[str, Any] = {"allow_unauthenticated": allow, **({"api_token_file": path} if path else {})}
    settings = make_settings(destinations=[destination("a", sink.url("/in"))], service=service)
    with pytest.raises(ConfigError) as refused:
        await start_engine(settings)
    assert ("MS07_API_TOKEN" if not path or "variable" in case else "service.api_token_file") in str(refused.value)
    assert "\n" not in str(refused.value)


async def test_no_token_and_no_explicit_setting_refuses_to_start(make_settings, sink: Sink, start_engine,
                                                                 monkeypatch) -> None:
    monkeypatch.delenv("MS07_API_TOKEN", raising=False)
    settings = make_settings(destinations=[destination("a", sink.url("/in"))],
                             service={"allow_unauthenticated": False})
    with pytest.raises(ConfigError, match="service.allow_unauthenticated"):
        await start_engine(settings)


def _bound(engine: Any) -> str:
    return engine.server.site._server.sockets[0].getsockname()[0]


async def test_without_a_token_it_warns_and_listens_on_loopback_unless_told(make_settings, sink: Sink, start_engine,
                                                                           monkeypatch, captured_logs) -> None:
    monkeypatch.delenv("MS07_API_TOKEN", raising=False)
    dests = [destination("a", sink.url("/in"))]
    engine = await start_engine(make_settings(destinations=dests, service={"allow_unauthenticated": True}))
    assert _bound(engine) == "127.0.0.1"
    lines = [json.loads(line) for line in captured_logs.getvalue().splitlines()]
    warned = [r for r in lines if r["level"] == "WARN" and "without authentication" in r["message"]]
    assert warned and warned[0]["metadata"]["loopback_only"] is True
    told = await start_engine(make_settings(destinations=dests, service={"allow_unauthenticated": True,
                                                                         "http_host": "0.0.0.0"}))
    assert _bound(told) == "0.0.0.0"
    assert (await raw(told.http_port, "GET", "/health/ready"))[0] != 401


async def test_with_a_token_it_listens_everywhere_and_does_not_warn(make_settings, sink: Sink, start_engine,
                                                                    monkeypatch, captured_logs) -> None:
    monkeypatch.setenv("MS07_API_TOKEN", f"  {TOKEN}\n")  # surrounding blanks are not part of it
    engine = await start_engine(make_settings(destinations=[destination("a", sink.url("/in"))],
                                              service={"allow_unauthenticated": False}))
    assert _bound(engine) == "0.0.0.0"
    assert "without authentication" not in captured_logs.getvalue()
    assert (await raw(engine.http_port, "GET", "/health/ready"))[0] == 401
    ok, _, _ = await raw(engine.http_port, "GET", "/health/ready", {"Authorization": f"Bearer {TOKEN}"})
    assert ok != 401


async def test_the_engine_process_exits_2_with_one_line_on_an_empty_token_file(tmp_path: Path, sink: Sink,
                                                                               env_for: dict[str, str]) -> None:
    empty = tmp_path / "token"
    empty.write_text("")
    config = write_config(tmp_path / "engine.yaml", {"service": {"api_token_file": str(empty)},
                                                     "destinations": [destination("a", sink.url("/in"))]})
    env = {**env_for, "MS07_SERVICE__ALLOW_UNAUTHENTICATED": "false"}
    env.pop("MS07_API_TOKEN", None)
    proc = EngineProcess(config, env, tmp_path / "engine.log")
    proc.env.pop("MS07_API_TOKEN", None)
    proc.start()
    assert await asyncio.to_thread(proc.wait, 60) == 2
    out = proc.log.read_text().strip()
    assert out.splitlines() == [f"error: service.api_token_file: {empty} is empty"], out
