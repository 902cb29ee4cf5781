"""Bad HTTP at the engine's API, as an attacker or a careless client sends it: odd
distribution ids, bodies whose Content-Encoding lies or is unknown, compression bombs,
bodies far over the largest payload. Each is one clear 4xx JSON error, nothing is logged
at ERROR, the connection stays usable, and an oversized body is refused before it is read."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import zlib
from typing import Any

import pytest

from tests.support import Sink, acli, check_response

pytestmark = pytest.mark.faults

SUBMIT = b'{"destinations": ["a"], "payload": {"x": 1}}'


class Raw:
    """One keep-alive HTTP/1.1 connection written by hand, so that bodies can lie about
    their encoding, stop half-way, or be chunked, and the same connection reused."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.sent: tuple[str, str] | None = None  # the request whose answer is checked against the description

    @classmethod
    async def open(cls, port: int) -> Raw:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def request(self, method: str, path: str, body: bytes | None = None, **headers: str) -> None:
        self.sent = (method, path)
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
        if body is not None and "Transfer_Encoding" not in headers:
            lines.append(f"Content-Length: {headers.pop('Content_Length', len(body))}")
        lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))

    async def response(self, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
        async def read() -> tuple[int, dict[str, str], bytes]:
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *rest = head.decode("latin-1").split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in rest if h)}
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
            return int(status_line.split()[1]), headers, body

        status, headers, body = await asyncio.wait_for(read(), timeout)
        if self.sent is not None:
            check_response(*self.sent, status, {k.title(): v for k, v in headers.items()}, body)
            self.sent = None
        return status, headers, body

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


@pytest.fixture
async def api(make_settings, sink: Sink, start_engine) -> Any:
    """An engine whose largest payload is 256 KiB (a destination's override; the global
    limit is 16 KiB)."""
    engine = await start_engine(make_settings(
        destinations=[{"name": "a", "url": sink.url("/a")},
                      {"name": "big", "url": sink.url("/big"), "max_payload_bytes": 256 * 1024}],
        distribution={"max_payload_bytes": 16 * 1024}))
    return engine


def _no_errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]


def _one_line_error(status: int, headers: dict[str, str], body: bytes) -> str:
    assert headers["content-type"].startswith("application/json"), (status, body[:200])
    data = json.loads(body)
    assert set(data) == {"error"} and "\n" not in data["error"], data
    return str(data["error"])


@pytest.mark.parametrize("distribution_id", [
    "%00", "a%00b", "%ff", "%ed%a0%80", "%c0%ae%c0%ae", "%F0%9F%92%A9", "00000000-0000-0000-0000-00000000000%00",
    "x" * 4000, "1'%20OR%20'1'='1", "%0d%0aSet-Cookie:%20x=1", "..%2f..%2fetc%2fpasswd", "-1", "%20",
])
async def test_odd_distribution_ids_are_404_not_500(api, caplog, distribution_id: str) -> None:
    conn = await Raw.open(api.http_port)
    try:
        await conn.request("GET", f"/api/v1/distributions/{distribution_id}")
        status, headers, body = await conn.response()
        assert status == 404 and _one_line_error(status, headers, body) == "no such distribution"
        await conn.request("GET", "/health/live")
        assert (await conn.response())[0] == 200  # the same connection still serves
    finally:
        await conn.close()
    assert _no_errors_logged(caplog) == []


async def test_cli_status_of_an_odd_id_is_one_line(api, env_for: dict[str, str]) -> None:
    for distribution_id in ("a\x00b", "\udcff", "x" * 4000):
        result = await acli(["status", distribution_id], env_for)
        assert result.exit_code != 0 and result.exception is None or isinstance(result.exception, SystemExit)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "is not a distribution id" in lines[0] and "Traceback" not in result.output, \
            result.output
        assert result.exit_code == 2  # a usage error: not an id at all (an unknown id is 4)


def _bomb(size: int) -> bytes:
    return gzip.compress(b"0" * size, compresslevel=9)


BAD_ENCODINGS = [
    ({"Content_Encoding": "gzip"}, SUBMIT, 400, "not valid gzip"),
    ({"Content_Encoding": "x-gzip"}, SUBMIT, 400, "not valid gzip"),
    ({"Content_Encoding": "deflate"}, SUBMIT, 400, "not valid deflate"),
    ({"Content_Encoding": "GZIP"}, gzip.compress(b"")[:10] + b"\xff" * 20, 400, "not valid gzip"),  # bad block
    ({"Content_Encoding": "gzip"}, gzip.compress(SUBMIT)[:-12], 400, "truncated"),
    ({"Content_Encoding": "gzip"}, gzip.compress(SUBMIT) + b"trailing", 400, "after the end"),
    ({"Content_Encoding": "gzip"}, _bomb(64 * 1024 * 1024), 413, "decompressed"),
    ({"Content_Encoding": "br"}, SUBMIT, 415, "'br' is not supported"),
    ({"Content_Encoding": "zstd"}, SUBMIT, 415, "is not supported"),
    ({"Content_Encoding": "compress"}, SUBMIT, 415, "is not supported"),
    ({"Content_Encoding": "gzip, gzip"}, gzip.compress(gzip.compress(SUBMIT)), 415, "is not supported"),
    ({"Content_Encoding": "gzip", "Transfer_Encoding": "chunked"}, b"5\r\nhello\r\n0\r\n\r\n", 400, "not valid gzip"),
]


@pytest.mark.parametrize("headers, body, status, message", BAD_ENCODINGS,
                         ids=[f"{h['Content_Encoding']}-{s}-{i}" for i, (h, _, s, _) in enumerate(BAD_ENCODINGS)])
async def test_a_body_that_lies_about_its_encoding_is_a_4xx(api, caplog, headers: dict[str, str], body: bytes,
                                                            status: int, message: str) -> None:
    conn = await Raw.open(api.http_port)
    try:
        await conn.request("POST", "/api/v1/distributions", body, Content_Type="application/json", **headers)
        got, resp_headers, resp_body = await conn.response()
        error = _one_line_error(got, resp_headers, resp_body)
        assert (got, message in error) == (status, True), error
        if status != 413:  # 413 closes the connection; the others leave it usable
            await conn.request("GET", "/health/live")
            assert (await conn.response())[0] == 200
    finally:
        await conn.close()
    assert _no_errors_logged(caplog) == []
    async with api.pool.connection() as db:
        assert (await (await db.execute("SELECT count(*) FROM distribution_jobs")).fetchone())[0] == 0


@pytest.mark.parametrize("encoding, encode", [
    ("gzip", gzip.compress), ("x-gzip", gzip.compress), ("deflate", zlib.compress), ("identity", bytes)])
async def test_compressed_submissions_are_still_accepted(api, encoding: str, encode: Any) -> None:
    conn = await Raw.open(api.http_port)
    try:
        await conn.request("POST", "/api/v1/distributions", encode(SUBMIT), Content_Type="application/json",
                           Content_Encoding=encoding)
        status, _, body = await conn.response()
        assert status == 202, body
    finally:
        await conn.close()


async def test_a_body_over_the_largest_payload_is_refused_before_it_is_read(api, caplog) -> None:
    """A 60 MiB Content-Length is answered 413 at once: the client has sent 1 KiB of it
    and waits (before, the server waited for the 60 MiB, read and parsed them)."""
    conn = await Raw.open(api.http_port)
    try:
        await conn.request("POST", "/api/v1/distributions", b"{" * 1024, Content_Length=str(60 * 1024 * 1024),
                           Content_Type="application/json")
        status, headers, body = await conn.response()
        assert status == 413 and "over the" in _one_line_error(status, headers, body)
    finally:
        await conn.close()
    assert _no_errors_logged(caplog) == []


async def test_a_chunked_body_is_cut_off_past_the_limit(api) -> None:
    """No Content-Length to go by: the server reads up to the largest payload plus its
    envelope (256 KiB + 64 KiB here), then answers 413 while the client still holds the
    rest of a 60 MiB body back."""
    conn = await Raw.open(api.http_port)
    try:
        await conn.request("POST", "/api/v1/distributions", b"", Transfer_Encoding="chunked",
                           Content_Type="application/json")
        chunk = b" " * 65536
        for _ in range(8):  # 512 KiB, past 320 KiB
            await conn.send(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        status, headers, body = await conn.response()
        assert status == 413 and "over the" in _one_line_error(status, headers, body)
    finally:
        await conn.close()


async def test_the_largest_allowed_payload_still_fits(api) -> None:
    """The limit follows the largest max_payload_bytes (a destination's override), with
    room for the JSON around it."""
    payload = "z" * (256 * 1024 - 2)  # 256 KiB once JSON-encoded: exactly the limit of "big"
    body = json.dumps({"destinations": ["big"], "payload": payload, "correlation_id": "c" * 200}).encode()
    conn = await Raw.open(api.http_port)
    try:
        await conn.request("POST", "/api/v1/distributions", body, Content_Type="application/json")
        status, _, resp = await conn.response()
        assert status == 202, resp
        over = json.dumps({"destinations": ["big"], "payload": payload + "z"}).encode()
        await conn.request("POST", "/api/v1/distributions", over, Content_Type="application/json")
        status, _, resp = await conn.response()
        assert status == 413 and b"over the 262144-byte limit of destination 'big'" in resp, resp
    finally:
        await conn.close()


MALFORMED = [
    b"POST /api/v1/distributions HTTP/1.1\r\nHost: x\r\nX-Correlation-ID: a\x7fb\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /api/v1/distributions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    b"POST /api/v1/distributions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
    b"POST /api/v1/distributions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
    b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\nNOT-HTTP garbage\r\n\r\n",  # the second request is junk
    b"GET /health/live HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n",
]


@pytest.mark.parametrize("data", MALFORMED, ids=range(len(MALFORMED)))
async def test_malformed_http_is_a_400_and_one_warning_line(api, caplog, data: bytes) -> None:
    conn = await Raw.open(api.http_port)
    try:
        await conn.send(data)
        status, _, _ = await conn.response()
        if status == 200:  # the good request before the junk
            status, _, _ = await conn.response()
        assert status == 400  # aiohttp logs before it answers: the record is there now
    finally:
        await conn.close()
    assert _no_errors_logged(caplog) == []
    # aiohttp logs junk in place of a request line at DEBUG itself; the rest is one WARNING line.
    logged = [r for r in caplog.records if r.name == "aiohttp.server" and r.levelno >= logging.INFO]
    assert all(r.levelno == logging.WARNING and r.exc_info is None and "\n" not in r.getMessage()
               for r in logged), [(r.levelname, r.getMessage()) for r in logged]
