"""The console's guard over real HTTP: login, session cookie, CSRF, read-only token, headers."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.console.conftest import OPERATOR_TOKEN, VIEWER_TOKEN, base, csrf_of, log_in
from tests.support import submit_n, wait_for


async def test_login_exchanges_the_token_for_a_strict_http_only_session(console_engine: Any,
                                                                        client: aiohttp.ClientSession) -> None:
    url = base(console_engine)
    async with client.get(f"{url}/console/dlq?status=dead", allow_redirects=False) as resp:
        assert resp.status == 303
        assert resp.headers["Location"].startswith("/console/login?next=")
    wrong = await log_in(client, url, "not-the-token")
    assert wrong.status == 401 and "not valid" in await wrong.text()
    resp = await log_in(client, url, OPERATOR_TOKEN)
    assert resp.status == 303 and resp.headers["Location"] == "/console/"
    cookie = resp.cookies["ms07_console"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/console"
    assert 0 < int(cookie["max-age"]) <= 8 * 3600
    assert OPERATOR_TOKEN not in cookie.value
    async with client.get(f"{url}/console/") as page:
        html = await page.text()
        assert page.status == 200 and "Overview" in html and 'data-role="operator"' in html
        csp = page.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert page.headers["X-Content-Type-Options"] == "nosniff" and page.headers["Cache-Control"] == "no-store"
        assert OPERATOR_TOKEN not in html and VIEWER_TOKEN not in html
        assert "<script>" not in html and "style=" not in html  # nothing inline for the CSP to refuse
    # A forged or altered cookie is no session.
    client.cookie_jar.update_cookies({"ms07_console": cookie.value[:-2] + "xx"}, response_url=page.url)
    async with client.get(f"{url}/console/", allow_redirects=False) as resp:
        assert resp.status == 303


async def test_every_post_needs_the_sessions_csrf_token(console_engine: Any, client: aiohttp.ClientSession) -> None:
    url = base(console_engine)
    [did] = await submit_n(console_engine, "hooks")
    await log_in(client, url, OPERATOR_TOKEN)
    async with client.get(f"{url}/console/destinations/hooks") as page:
        token = csrf_of(await page.text())
    async with client.post(f"{url}/console/destinations/hooks/check", data={}) as resp:
        assert resp.status == 403 and "CSRF" in await resp.text()
    async with client.post(f"{url}/console/destinations/hooks/check", data={"csrf": "0" * 43}) as resp:
        assert resp.status == 403
    async with client.post(f"{url}/console/destinations/hooks/check", data={"csrf": token},
                           headers={"Origin": "http://evil.example"}) as resp:
        assert resp.status == 403 and "another site" in await resp.text()
    async with client.post(f"{url}/console/dlq/replay", data={"id": did, "confirm": "yes"}) as resp:
        assert resp.status == 403
    async with client.post(f"{url}/console/destinations/hooks/check", data={"csrf": token}) as resp:
        assert resp.status == 200 and 'id="probe"' in await resp.text()
    # Login itself refuses a form that did not come from its own page.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as fresh:
        async with fresh.post(f"{url}/console/login", data={"token": OPERATOR_TOKEN}, allow_redirects=False) as r:
            assert r.status == 403 and "ms07_console" not in r.cookies


async def test_the_read_only_token_reads_but_never_acts(console_engine: Any, client: aiohttp.ClientSession,
                                                        sink: Any) -> None:
    url = base(console_engine)
    sink.on("/flaky", _status(500))
    [dead] = await submit_n(console_engine, "flaky")
    await wait_for(lambda: _job_status(console_engine, dead, "dead"), what="the job dead")
    read = {"Authorization": f"Bearer {VIEWER_TOKEN}"}
    async with client.get(f"{url}/api/v1/distributions/{dead}", headers=read) as resp:
        assert resp.status == 200
    async with client.post(f"{url}/api/v1/distributions", json={"destination": "hooks", "payload": {}},
                           headers=read) as resp:
        assert resp.status == 403 and (await resp.json()) == {"error": "the read-only token may read, not act"}
    async with client.post(f"{url}/api/v1/replays", json={"destination": "flaky"}, headers=read) as resp:
        assert resp.status == 403
    async with client.delete(f"{url}/api/v1/replays/abc", headers=read) as resp:
        assert resp.status == 403

    resp = await log_in(client, url, VIEWER_TOKEN)
    assert resp.status == 303
    async with client.get(f"{url}/console/dlq") as page:
        html = await page.text()
    assert dead[:8] in html and 'data-role="viewer"' in html
    for button in ('name="id"', "replay-selected", "replay-filter"):
        assert button not in html
    async with client.get(f"{url}/console/destinations/hooks") as page:
        html = await page.text()
        assert "check-now" not in html
    token = csrf_of(html)  # the logout form's: a valid token of this session
    for path, form in (("/console/dlq/replay", {"id": dead, "confirm": "yes"}),
                       ("/console/destinations/hooks/check", {}),
                       ("/console/replays", {"destination": "flaky"})):
        async with client.post(f"{url}{path}", data={"csrf": token, **form}) as resp:
            assert resp.status == 403 and "read-only" in await resp.text(), path
    assert await _job_status(console_engine, dead, "dead")  # nothing was replayed


async def test_without_any_token_the_console_opens_like_the_api(make_settings: Any, start_engine: Any,
                                                               client: aiohttp.ClientSession) -> None:
    engine = await start_engine(make_settings(destinations=[{"name": "hooks", "url": "http://127.0.0.1:9/"}]))
    async with client.get(f"{base(engine)}/console/destinations/hooks") as page:
        assert page.status == 200 and 'data-role="operator"' in await page.text()
        assert "Log out" not in await page.text()
        token = csrf_of(await page.text())
    async with client.post(f"{base(engine)}/console/destinations/hooks/check", data={}) as resp:
        assert resp.status == 403  # CSRF still applies
    async with client.post(f"{base(engine)}/console/destinations/hooks/check", data={"csrf": token}) as resp:
        assert resp.status == 200


def _status(code: int) -> Any:
    from tests.support import status

    return status(code)


async def _job_status(engine: Any, did: str, want: str) -> bool:
    async with engine.pool.connection() as conn:
        cur = await conn.execute("SELECT status FROM distribution_jobs WHERE distribution_id = %s", (did,))
        row = await cur.fetchone()
    return bool(row) and row[0] == want


async def test_the_read_only_token_from_a_file_follows_its_rotation(
        make_settings: Any, start_engine: Any, tmp_path: Any, monkeypatch: Any) -> None:
    from ms07.engine.server import ApiToken
    from ms07.errors import ConfigError

    monkeypatch.setenv("MS07_API_TOKEN", OPERATOR_TOKEN)
    monkeypatch.delenv("MS07_API_READ_TOKEN", raising=False)
    monkeypatch.setattr(ApiToken, "RECHECK_SECONDS", 0.0)
    secret = tmp_path / "read-token"
    secret.write_text("first-read-token-0a1b2c\n")
    engine = await start_engine(make_settings(service={"read_only_token_file": str(secret)}))
    api = f"{base(engine)}/api/v1/distributions"

    async def get(token: str) -> int:
        async with aiohttp.ClientSession() as s, s.get(api, headers={"Authorization": f"Bearer {token}"}) as r:
            return r.status

    assert await get("first-read-token-0a1b2c") == 200
    async with aiohttp.ClientSession() as s, s.post(api, json={}, headers={
            "Authorization": "Bearer first-read-token-0a1b2c"}) as r:
        assert r.status == 403
    secret.write_text("second-read-token-3d4e5f-longer\n")

    async def rotated() -> bool:
        return await get("second-read-token-3d4e5f-longer") == 200

    await wait_for(rotated, what="the rotated read token in force")
    assert await get("first-read-token-0a1b2c") == 401
    secret.write_text("")
    with pytest.raises(ConfigError, match="read_only_token_file"):
        ApiToken(make_settings(service={"read_only_token_file": str(secret)}), read_only=True)
