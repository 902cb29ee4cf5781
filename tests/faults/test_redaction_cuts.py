"""Redaction before truncation, and of encoded echoes: a destination that answers with a
long error body quoting a secret just before the cut, or quoting it URL-encoded,
JSON-escaped, base64-encoded or hex-encoded, leaves no recognisable piece of it in
distribution_attempts, distribution_jobs, the DLQ, the API, `ms07 status --json`,
`ms07 dlq list --json` or the logs."""

from __future__ import annotations

import base64
import json
import re
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import psycopg
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from ms07 import keys, logs
from ms07.engine.delivery import classify
from tests.support import Sink, acli, wait_for

pytestmark = pytest.mark.faults

# 22 characters like the API key, with characters that URL and JSON encode.
API_KEY = f"k/{secrets.token_urlsafe(9)}+=\"\\q"
BEARER = f"Tk{secrets.token_urlsafe(15)}"
API_TOKEN = f"api-token-{secrets.token_hex(8)}"
SIGNING_KEY = base64.b64encode(secrets.token_bytes(24)).decode()
SHORTEST = 6  # no piece this long of a secret's form may be left


def forms(secret: str) -> dict[str, str]:
    raw = secret.encode()
    return {"raw": secret, "quote": quote(secret, safe=""), "quote /": quote(secret), "quote_plus": quote_plus(secret),
            "lower-case escapes": re.sub("%[0-9A-F]{2}", lambda m: m[0].lower(), quote(secret, safe="")),
            "json": json.dumps(secret)[1:-1],
            "hex": raw.hex(), "base64": base64.b64encode(raw).decode(),
            "base64url": base64.urlsafe_b64encode(raw).decode().rstrip("=")}


def echoes(secret: str) -> dict[str, str]:
    """What a careless destination may send back: each form, and base64 of credentials."""
    out = forms(secret)
    for user in ("u:", "us:", "use:"):  # every alignment of the secret inside the base64
        out[f"basic {user}"] = "Basic " + base64.b64encode(f"{user}{secret}".encode()).decode()
    out["bearer header"] = f"Authorization: Bearer {secret}"
    return out


def base64_cores(raw: bytes) -> list[str]:
    """The base64 characters only ``raw`` decides, at each alignment: those that agree
    whether its neighbours are all 0 bits or all 1 bits (run breaks become spaces)."""
    out = []
    for k in range(3):
        zeros = base64.b64encode(b"\0" * k + raw + b"\0\0").decode()
        ones = base64.b64encode(b"\xff" * k + raw + b"\xff\xff").decode()
        out += "".join(a if a == b and a != "=" else " " for a, b in zip(zeros, ones, strict=True)).split()
    return out


def pieces(text: str, secret: str) -> list[str]:
    """Pieces of ``secret`` (any form; base64 only where its own bytes decide) in ``text``."""
    found = []
    candidates = [f for k, f in forms(secret).items() if not k.startswith("base64")]
    candidates += base64_cores(secret.encode())
    candidates += [c.translate(str.maketrans("+/", "-_")) for c in base64_cores(secret.encode())]
    for form in candidates:
        size = 2 * SHORTEST if form == secret.encode().hex() else SHORTEST  # a hex piece: as many bytes
        for i in range(len(form) - size + 1):
            piece = form[i:i + size]
            if piece in text:
                found.append(piece)
                break
    return found


@pytest.fixture
def registered() -> None:
    for s in (API_KEY, BEARER, API_TOKEN):
        logs.register_secret(s)


@pytest.mark.parametrize("secret", [API_KEY, BEARER], ids=["api key", "bearer token"])
def test_a_secret_at_any_place_around_the_cut_leaves_no_piece(registered: None, secret: str) -> None:
    for name, echo in echoes(secret).items():
        for before in range(470, 520):
            body = ("x" * before + echo + " trailing text").encode()
            for window in (len(body), 512, 600, 4096):  # the whole body, or its head
                head = body[:window]
                _, _, message, _ = classify(500, head, {}, whole=len(head) == len(body))
                assert message is not None and len(message) <= 512 + len("HTTP 500: ")
                assert not pieces(message, secret), (name, before, window, message[-60:])
                assert not pieces(logs.clip(head.decode(errors="replace"), 500, partial=True), secret)
            assert not pieces(logs.clip(body.decode(), 300), secret), (name, before)


def hostile(before: int, echo: Callable[[web.Request], str]) -> Any:
    async def respond(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=500, text="x" * before + echo(request) + " and more text after it")

    return respond


CASES: dict[str, tuple[int, Callable[[web.Request], str]]] = {
    "key at the cut": (500, lambda r: r.headers["X-API-Key"]),
    "key just past the cut": (505, lambda r: r.headers["X-API-Key"]),
    "key URL-encoded": (10, lambda r: quote(r.headers["X-API-Key"], safe="")),
    "key form-encoded": (490, lambda r: "key=" + quote_plus(r.headers["X-API-Key"])),
    "key JSON-escaped": (20, lambda r: json.dumps({"got": r.headers["X-API-Key"]})),
    "key in base64 credentials": (30, lambda r: base64.b64encode(f"me:{r.headers['X-API-Key']}".encode()).decode()),
    "key hex": (40, lambda r: r.headers["X-API-Key"].encode().hex()),
    "bearer at the cut": (495, lambda r: r.headers["Authorization"]),
    "signing key without its prefix": (498, lambda r: quote(SIGNING_KEY, safe="")),
}


async def test_every_store_and_view_of_a_refusal_is_clean(make_settings, sink: Sink, start_engine, captured_logs,
                                                          env_for, database_url, redis_url, monkeypatch) -> None:
    monkeypatch.setenv("T_KEY", API_KEY)
    monkeypatch.setenv("T_BEARER", BEARER)
    monkeypatch.setenv("T_SIGNING", f"whsec_{SIGNING_KEY}")
    monkeypatch.setenv("MS07_API_TOKEN", API_TOKEN)
    dests = []
    for i, (name, (before, echo)) in enumerate(CASES.items()):
        sink.on(f"/p{i}", hostile(before, echo))
        auth = ({"type": "bearer", "token_env": "T_BEARER"} if "bearer" in name
                else {"type": "api_key", "header": "X-API-Key", "value_env": "T_KEY"})
        signing = {"signing": {"secret_env": "T_SIGNING"}} if "signing" in name else {}
        dests.append({"name": f"d{i}", "url": sink.url(f"/p{i}"), "auth": auth, "max_attempts": 2, **signing})
    engine = await start_engine(make_settings(destinations=dests))
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{engine.http_port}", timeout=10, headers=auth) as http:
        ids = []
        for d in dests:
            r = await http.post("/api/v1/distributions", json={"destinations": [d["name"]], "payload": {}})
            assert r.status_code == 202, r.text
            ids.append(r.json()["distributions"][0]["distribution_id"])

        async def parked() -> bool:
            states = [(await http.get(f"/api/v1/distributions/{i}")).json()["status"] for i in ids]
            return all(s in ("failed", "dead") for s in states)

        await wait_for(parked, timeout=30, what="every distribution parked")
        views = {f"GET /api/v1/distributions/{i}": (await http.get(f"/api/v1/distributions/{i}")).text for i in ids}
    # The destinations were sent the secrets and echoed them (else this proves nothing).
    assert any(API_KEY in r.headers.get("X-API-Key", "") for r in sink.received)
    assert any(BEARER in r.headers.get("Authorization", "") for r in sink.received)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT coalesce(json_agg(error_message)::text, '') FROM distribution_attempts")
        views["distribution_attempts.error_message"] = (await cur.fetchone())[0]
        cur = await conn.execute("SELECT coalesce(json_agg(last_error)::text, '') FROM distribution_jobs")
        views["distribution_jobs.last_error"] = (await cur.fetchone())[0]
    assert views["distribution_attempts.error_message"].count("HTTP 500") == 2 * len(CASES)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        entries = await client.xrange(keys.DLQ)
    finally:
        await client.aclose()
    assert len(entries) == len(CASES)
    views["the DLQ stream"] = json.dumps(entries, ensure_ascii=False)
    env = {**env_for, "MS07_API_TOKEN": API_TOKEN}
    for args in (["status", ids[0], "--json"], ["status", ids[-1], "--json"], ["dlq", "list", "--json"]):
        result = await acli(args, env)
        assert result.exit_code == 0, result.output
        views[f"ms07 {' '.join(args)}"] = result.output
    views["the logs"] = captured_logs.getvalue()
    assert "HTTP 500" in views["the logs"]
    for where, text in views.items():
        for secret in (API_KEY, BEARER, SIGNING_KEY):
            assert not pieces(text, secret), f"a piece of a secret in {where}: {pieces(text, secret)}"
            # JSON views escape once more: look in the decoded text too.
            assert not pieces(text.replace('\\\\', '\\').replace('\\"', '"'), secret), where

