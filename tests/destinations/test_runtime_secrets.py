"""Secrets given through the API (issue 20, step 5): stored as AES-GCM ciphertext only,
never in an answer, a log line (DEBUG) or an error; used for deliveries; a wrong key is one
clear error at start; rekey keeps every destination working."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest

from ms07 import secretbox
from ms07.config import STORED_SECRETS, Settings
from ms07.errors import ConfigError
from ms07.ops import dest_admin
from tests.support import Sink, destination, submit_n, wait_for

TOKEN = "secrets-api-token-4e2a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "bearer-value-never-shown-5f0c"
SECRET_2 = "bearer-value-rotated-8d21"
KEY_1 = base64.urlsafe_b64encode(b"1" * 32).decode()
KEY_2 = base64.urlsafe_b64encode(b"2" * 32).decode()
KEY_3 = base64.urlsafe_b64encode(b"3" * 32).decode()


async def _call(engine: Any, method: str, path: str, body: Any = None) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        r = await http.request(method, f"http://127.0.0.1:{engine.http_port}{path}", headers=AUTH, json=body)
    assert SECRET not in r.text and SECRET_2 not in r.text
    return r


async def _table(url: str) -> str:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute("SELECT row_to_json(d)::text FROM destinations d")
        return " ".join(r[0] for r in await cur.fetchall())


async def test_a_secret_given_through_the_api_is_stored_encrypted_and_used(
    monkeypatch: pytest.MonkeyPatch, make_settings: Callable[..., Settings], start_engine: Callable[..., Any],
    sink: Sink, database_url: str, captured_logs: Any,
) -> None:
    monkeypatch.setenv("MS07_API_TOKEN", TOKEN)
    monkeypatch.setenv("MS07_SECRET_KEY", KEY_1)
    engine = await start_engine(make_settings(destinations=[destination("a", sink.url("/a"))]))
    created = await _call(engine, "POST", "/api/v1/destinations",
                          {"name": "s", "url": sink.url("/s"), "auth": {"type": "bearer", "token": SECRET}})
    assert created.status_code == 201, created.text
    shown = created.json()["secrets"]
    assert list(shown) == ["auth.token"] and shown["auth.token"]["fingerprint"] == secretbox.fingerprint(SECRET)
    assert created.json()["config"]["auth"]["token_env"] == "ms07-stored:s/auth.token"
    table = await _table(database_url)
    i = table.find(SECRET)
    assert i < 0, table[max(0, i - 200):i + 40]
    assert f'"ciphertext": "v1:{secretbox.key_id(b"1" * 32)}:' in table

    await wait_for(lambda: "s" in engine.clients, timeout=2)
    [first] = await submit_n(engine, "s", 1)
    await wait_for(lambda: first in sink.unique_keys("/s"), what="delivered with the stored token")
    assert [r.headers["Authorization"] for r in sink.received if r.path == "/s"] == [f"Bearer {SECRET}"]

    changed = await _call(engine, "PATCH", "/api/v1/destinations/s", {"auth": {"token": SECRET_2}})
    assert changed.status_code == 200 and changed.json()["changed"] == ["auth.token"], changed.text
    assert changed.json()["secrets"]["auth.token"]["fingerprint"] == secretbox.fingerprint(SECRET_2)
    await wait_for(lambda: STORED_SECRETS.get("ms07-stored:s/auth.token") == SECRET_2, timeout=2)
    await wait_for(lambda: engine.live.specs["s"]["secrets"]["auth.token"].startswith(
        secretbox.fingerprint(SECRET_2)), timeout=2, what="rebuilt with the new secret")
    [second] = await submit_n(engine, "s", 1)
    await wait_for(lambda: second in sink.unique_keys("/s"), what="delivered with the new token")
    assert sink.received[-1].headers["Authorization"] == f"Bearer {SECRET_2}"

    for bad, message in (({"auth": {"token": ""}}, "auth.token: must be a non-empty string"),
                         ({"auth": {"token": "x", "token_file": "/etc/t"}}, "give the secret or a reference")):
        r = await _call(engine, "PATCH", "/api/v1/destinations/s", bad)
        assert r.status_code == 400 and message in r.json()["error"], r.text
    logged = captured_logs.getvalue()
    assert logged and SECRET not in logged and SECRET_2 not in logged
    assert SECRET_2 not in await _table(database_url)


async def test_no_key_refuses_a_secret_and_a_wrong_key_stops_the_start(
    monkeypatch: pytest.MonkeyPatch, make_settings: Callable[..., Settings], start_engine: Callable[..., Any],
    database_url: str,
) -> None:
    settings = make_settings()
    monkeypatch.delenv("MS07_SECRET_KEY", raising=False)
    monkeypatch.delenv("MS07_SECRET_KEY_FILE", raising=False)
    body = {"name": "k", "url": "http://127.0.0.1:9/", "auth": {"type": "bearer", "token": SECRET}}
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        with pytest.raises(ConfigError, match="needs MS07_SECRET_KEY"):
            await dest_admin.add(conn, settings, body, operator="t")
        assert await dest_admin.rows(conn) == {}
        monkeypatch.setenv("MS07_SECRET_KEY", KEY_1)
        await dest_admin.add(conn, settings, body, operator="t")
        await conn.commit()

    monkeypatch.setenv("MS07_SECRET_KEY", KEY_3)
    with pytest.raises(ConfigError) as err:
        await start_engine(settings)
    message = str(err.value)
    assert "destination k:" in message and secretbox.key_id(b"1" * 32) in message and "\n" not in message
    assert SECRET not in message and KEY_3 not in message


async def test_rekey_moves_every_secret_to_the_new_key(
    monkeypatch: pytest.MonkeyPatch, make_settings: Callable[..., Settings], database_url: str,
) -> None:
    settings = make_settings()
    monkeypatch.setenv("MS07_SECRET_KEY", KEY_1)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await dest_admin.add(conn, settings, {"name": "r", "url": "http://127.0.0.1:9/",
                                              "auth": {"type": "basic", "username": "u", "password": SECRET},
                                              "signing": {"secret": SECRET_2}}, operator="t")
        await conn.commit()
        monkeypatch.setenv("MS07_SECRET_KEY", f"{KEY_2},{KEY_1}")  # the new key first
        dry = await dest_admin.rekey(conn, operator="t", dry_run=True)
        assert dry["reencrypted"] == {"r": ["auth.password", "signing.secret"]}
        await dest_admin.rekey(conn, operator="t")
        await conn.commit()
        assert (await dest_admin.rekey(conn, operator="t"))["reencrypted"] == {}
        monkeypatch.setenv("MS07_SECRET_KEY", KEY_2)  # the old key dropped
        STORED_SECRETS.clear()
        rows = await dest_admin.rows(conn)
        assert dest_admin.load_secrets(rows) == []
    assert STORED_SECRETS["ms07-stored:r/auth.password"] == SECRET
    assert STORED_SECRETS["ms07-stored:r/signing.secret"] == SECRET_2
    table = await _table(database_url)
    assert SECRET not in table and secretbox.key_id(b"1" * 32) not in table


async def test_signing_secret_rotation_signs_with_both_for_the_window_then_drops_the_old(
    monkeypatch: pytest.MonkeyPatch, make_settings: Callable[..., Settings], start_engine: Callable[..., Any],
    sink: Sink, database_url: str,
) -> None:
    from ms07.engine.signing import signature

    monkeypatch.setenv("MS07_API_TOKEN", TOKEN)
    monkeypatch.setenv("MS07_SECRET_KEY", KEY_1)
    monkeypatch.setenv("OLD_SIGNING", "whsec_" + base64.b64encode(b"o" * 32).decode())
    engine = await start_engine(make_settings(destinations=[
        destination("w", sink.url("/w"), signing={"secret_env": "OLD_SIGNING"})]))
    new = "whsec_" + base64.b64encode(b"n" * 32).decode()

    def signed_by(r: Any) -> list[str]:
        body, msg_id, ts = r.body, r.headers["webhook-id"], int(r.headers["webhook-timestamp"])
        names = {signature(s, msg_id, ts, body): n for n, s in (("old", "whsec_" + base64.b64encode(b"o" * 32)
                                                                 .decode()), ("new", new))}
        return [names.get(sig, "?") for sig in r.headers["webhook-signature"].split(" ")]

    rotated = await _call(engine, "POST", "/api/v1/destinations/w/secret/rotate",
                          {"secret": new, "keep_previous_seconds": 2})
    assert rotated.status_code == 200, rotated.text
    assert new not in rotated.text and new not in await _table(database_url)
    assert rotated.json()["secrets"]["signing.secret"]["fingerprint"] == secretbox.fingerprint(new)
    assert "expires_at" in rotated.json()["secrets"]["signing.previous_secret"]
    await wait_for(lambda: "secrets" in engine.live.specs["w"] and engine.live.specs["w"]["secrets"], timeout=2)
    [during] = await submit_n(engine, "w", 1)
    await wait_for(lambda: during in sink.unique_keys("/w"))
    assert signed_by(sink.received[-1]) == ["new", "old"]  # both, for receivers on either

    async def dropped() -> bool:
        async with engine.pool.connection() as conn:
            return "signing.previous_secret" not in (await dest_admin.rows(conn))["w"]["secrets"]

    await wait_for(dropped, timeout=8, what="the previous secret dropped after its window")
    await wait_for(lambda: not engine.live.specs["w"]["spec"]["signing"]["previous_secret_env"], timeout=2)
    [after] = await submit_n(engine, "w", 1)
    await wait_for(lambda: after in sink.unique_keys("/w"))
    assert signed_by(sink.received[-1]) == ["new"]
    unsigned = await _call(engine, "POST", "/api/v1/destinations/nope/secret/rotate")
    assert unsigned.status_code == 404
