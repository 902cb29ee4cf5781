"""diagnose auth: 401/403 attempts, redacted config, JWT expiry, OAuth2 cache, --probe."""

from __future__ import annotations

import base64
import json
import time

from aiohttp import web

from ms07.diagnose import DiagnoseOptions, run_check_async
from ms07.diagnose.auth import jwt_expiry
from tests.diagnose.conftest import acli, ids, parse, validate_check
from tests.support import destination, status


def jwt(exp: float) -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part({'sub': 'ms07', 'exp': int(exp)})}.c2lnbmF0dXJl"


def test_jwt_expiry_reads_exp_without_verification() -> None:
    assert jwt_expiry(jwt(1700000000)) == 1700000000
    assert jwt_expiry("opaque-token") is None
    assert jwt_expiry("a.b.c") is None
    assert jwt_expiry("a.!!!.c") is None


async def test_auth_failures_and_expired_jwt(make_settings, db, cli, config_file, monkeypatch) -> None:
    expired = jwt(time.time() - 7200)
    soon = jwt(time.time() + 3600)
    monkeypatch.setenv("D1_TOKEN", expired)
    monkeypatch.setenv("D2_TOKEN", soon)
    db.attempts("d1", 5, status="failed", code=401, error_code="AUTHENTICATION_FAILED",
                message="HTTP 401: token expired")
    db.attempts("d1", 2, status="failed", code=403, error_code="AUTHENTICATION_FAILED", message="HTTP 403: forbidden",
                ago=30)
    db.attempts("d2", 3, status="failed", code=401, error_code="AUTHENTICATION_FAILED", message="HTTP 401", ago=300)
    db.attempts("d2", 1, ago=10)  # recovered since
    dests = [
        destination("d1", "http://127.0.0.1:9/in", auth={"type": "bearer", "token_env": "D1_TOKEN"}),
        destination("d2", "http://127.0.0.1:9/in", auth={"type": "bearer", "token_env": "D2_TOKEN"}),
        destination("d3", "http://127.0.0.1:9/in",
                    auth={"type": "api_key", "header": "X-Key", "value_env": "NOT_SET_X"}),
    ]
    settings = make_settings(destinations=dests)
    result = await run_check_async(settings, "auth")
    by = {(f.id, f.subject): f for f in result.findings}
    assert by[("auth.failures", "d1")].severity == "critical"  # its latest attempt was refused too
    assert "401 x5" in by[("auth.failures", "d1")].evidence and "403 x2" in by[("auth.failures", "d1")].evidence
    assert by[("auth.failures", "d2")].severity == "warning"
    assert by[("auth.token_expired", "d1")].severity == "critical"
    assert by[("auth.token_expiring", "d2")].severity == "warning"
    assert by[("auth.secret_missing", "d3")].severity == "critical"
    assert "NOT_SET_X" in by[("auth.secret_missing", "d3")].evidence
    table = next(s for s in result.sections if s.title.startswith("auth configuration"))
    assert ["d1", "bearer", "token_env=D1_TOKEN", "set"] == table.rows[0][:4]
    assert result.exit_code == 2

    res = await acli(cli, ["diagnose", "auth", "--json"], config=config_file(destinations=dests),
                     env={"D1_TOKEN": expired, "D2_TOKEN": soon})
    assert res.exit_code == 2
    data = parse(res)
    validate_check(data)
    assert ids(data)["auth.token_expired"] == "critical"
    res_text = await acli(cli, ["diagnose", "auth"], config=config_file(destinations=dests),
                          env={"D1_TOKEN": expired, "D2_TOKEN": soon})
    for secret in (expired, soon, expired.split(".")[1]):
        assert secret not in res.stdout and secret not in res_text.stdout


async def test_probe_uses_the_destination_credentials(make_settings, sink, monkeypatch) -> None:
    monkeypatch.setenv("GOOD_TOKEN", "good-secret-1")
    monkeypatch.setenv("BAD_TOKEN", "bad-secret-1")

    async def guarded(request: web.Request, n: int) -> web.StreamResponse:
        ok = request.headers.get("Authorization") == "Bearer good-secret-1"
        return web.Response(status=200 if ok else 401, text="ok" if ok else "no")

    sink.on("/health", guarded)
    sink.on("/forbidden", status(403))
    dests = [
        destination("good", sink.url("/in"), health_url=sink.url("/health"),
                    auth={"type": "bearer", "token_env": "GOOD_TOKEN"}),
        destination("bad", sink.url("/in"), health_url=sink.url("/health"),
                    auth={"type": "bearer", "token_env": "BAD_TOKEN"}),
        destination("forbidden", sink.url("/in"), health_url=sink.url("/forbidden")),
    ]
    settings = make_settings(destinations=dests)
    result = await run_check_async(settings, "auth", DiagnoseOptions.from_settings(settings, probe=True))
    rejected = {f.subject: f for f in result.findings if f.id == "auth.probe_rejected"}
    assert set(rejected) == {"bad", "forbidden"} and rejected["bad"].severity == "critical"
    table = next(s for s in result.sections if s.title == "authenticated probe")
    assert {r[0]: r[3] for r in table.rows} == {"good": "accepted", "bad": "refused", "forbidden": "refused"}
    assert [r.headers.get("Authorization") for r in sink.received if r.path == "/health"].count(
        "Bearer good-secret-1") == 1
    assert all("secret" not in f.evidence for f in result.findings)


async def test_oauth2_cached_token_expiry_written_by_the_engine(make_settings, sink, monkeypatch, start_engine) -> None:
    """The engine publishes the cached token's expiry (never the token) for diagnose auth."""
    import json as _json

    from ms07.ops.submit import submit
    from ms07.runtime import Runtime
    from tests.support import wait_for

    monkeypatch.setenv("CLIENT_SECRET", "s3cret-value")

    async def token(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(text=_json.dumps({"access_token": f"tok-{n}", "expires_in": 1800}),
                            content_type="application/json")

    sink.on("/token", token)
    dests = [destination("o", sink.url("/in"), auth={
        "type": "oauth2_client_credentials", "token_url": sink.url("/token"), "client_id": "ms07",
        "client_secret_env": "CLIENT_SECRET"})]
    settings = make_settings(destinations=dests)
    await start_engine(settings)
    async with Runtime(settings) as rt:
        async with rt.connection() as conn:
            await submit(conn, await rt.queue(), settings, ["o"], {"n": 1})
        redis = (await rt.queue()).redis
        from ms07 import keys

        info = await wait_for(lambda: redis.hgetall(keys.token_info("o")), timeout=20, what="token info")
    assert 1790 < float(info["expires_at"]) - time.time() <= 1800
    assert "tok-" not in str(info)
    result = await run_check_async(settings, "auth")
    table = next(s for s in result.sections if s.title.startswith("auth configuration"))
    assert table.rows[0][1] == "oauth2_client_credentials"
    assert table.rows[0][4].startswith(("cached, expires in 29m", "cached, expires in 30m"))
    assert "client_secret_env=CLIENT_SECRET" in table.rows[0][2]
    assert result.status == "healthy"


async def test_a_token_echoed_in_an_error_body_is_redacted(make_settings, db, cli, config_file, monkeypatch) -> None:
    monkeypatch.setenv("ECHO_TOKEN", "tok-3f9a-very-secret")
    db.attempts("echo", 2, status="failed", code=401, error_code="AUTHENTICATION_FAILED",
                message="HTTP 401: token tok-3f9a-very-secret is revoked")
    dests = [destination("echo", "http://127.0.0.1:9/in", auth={"type": "bearer", "token_env": "ECHO_TOKEN"})]
    res = await acli(cli, ["diagnose", "auth"], config=config_file(destinations=dests),
                     env={"ECHO_TOKEN": "tok-3f9a-very-secret"})
    assert res.exit_code == 2
    assert "tok-3f9a-very-secret" not in res.stdout and "token *** is revoked" in res.stdout
    result = await run_check_async(make_settings(destinations=dests), "auth")
    assert "tok-3f9a" not in result.finding("failures").evidence
