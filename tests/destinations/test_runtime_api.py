"""/api/v1/destinations and ms07 destinations add|edit|pause|resume|remove (issue 20,
step 2): validation as the config's at each door, nothing written on an error, no secret
in any answer, DELETE refused with unfinished jobs unless open=dead, every change audited."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from ms07 import keys
from ms07.config import Settings
from tests.support import Sink, acli, check_response, destination, write_config

TOKEN = "dest-api-token-77a1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "s3cr3t-value-that-must-never-show-9c1"


@pytest.fixture
async def engine(monkeypatch: pytest.MonkeyPatch, make_settings: Callable[..., Settings], sink: Sink,
                 start_engine: Callable[..., Any]) -> Any:
    monkeypatch.setenv("MS07_API_TOKEN", TOKEN)
    monkeypatch.setenv("DEST_TOKEN", SECRET)
    return await start_engine(make_settings(destinations=[destination("a", sink.url("/a"))]))


async def _call(engine: Any, method: str, path: str, body: Any = None) -> httpx.Response:
    url = f"http://127.0.0.1:{engine.http_port}{path}"
    async with httpx.AsyncClient() as http:
        r = await http.request(method, url, headers=AUTH, json=body)
    check_response(method, url, r.status_code, r.headers, r.content)
    assert SECRET not in r.text
    return r


async def _rows(database_url: str) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT name, version, spec FROM destinations WHERE spec IS NOT NULL ORDER BY name")
        return list(await cur.fetchall())


async def test_crud_through_the_api(engine: Any, sink: Sink, database_url: str) -> None:
    body = {"name": "crm", "url": sink.url("/crm"), "timeout_seconds": 4,
            "auth": {"type": "bearer", "token_env": "DEST_TOKEN"}}
    created = await _call(engine, "POST", "/api/v1/destinations", body)
    assert created.status_code == 201, created.text
    assert created.json()["config"]["auth"] == {"type": "bearer", "token_env": "DEST_TOKEN",
                                                "token_auth_method": "client_secret_basic",
                                                "refresh_margin_seconds": 30.0}
    assert (await _call(engine, "POST", "/api/v1/destinations", body)).status_code == 409
    listed = (await _call(engine, "GET", "/api/v1/destinations")).json()["destinations"]
    assert [d["name"] for d in listed] == ["a", "crm"]

    changed = await _call(engine, "PATCH", "/api/v1/destinations/crm", {"timeout_seconds": 6, "max_attempts": 2})
    assert changed.status_code == 200 and changed.json()["changed"] == ["max_attempts", "timeout_seconds"]
    assert changed.json()["version"] == created.json()["version"] + 1
    unset = await _call(engine, "PATCH", "/api/v1/destinations/crm", {"max_attempts": None})
    assert unset.json()["changed"] == ["max_attempts"] and unset.json()["config"]["max_attempts"] is None
    renamed = await _call(engine, "PATCH", "/api/v1/destinations/crm", {"name": "other"})
    assert renamed.status_code == 400 and "renamed" in renamed.json()["error"]
    assert (await _call(engine, "GET", "/api/v1/destinations/nope")).status_code == 404

    paused = await _call(engine, "POST", "/api/v1/destinations/crm/pause", {"reason": "maintenance"})
    assert paused.status_code == 200 and paused.json()["paused"] and paused.json()["changed"]
    assert paused.json()["paused_reason"] == "maintenance"
    again = await _call(engine, "POST", "/api/v1/destinations/crm/pause")
    assert again.status_code == 200 and not again.json()["changed"]
    resumed = await _call(engine, "POST", "/api/v1/destinations/crm/resume")
    assert resumed.status_code == 200 and not resumed.json()["paused"]

    removed = await _call(engine, "DELETE", "/api/v1/destinations/crm")
    assert removed.status_code == 200 and removed.json() == {"name": "crm", "removed": True, "parked": 0}
    assert [r[0] for r in await _rows(database_url)] == ["a"]
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT operator, step, detail::text FROM recovery_audit"
                                 " WHERE plan = 'destinations' ORDER BY id")
        audit = await cur.fetchall()
    # (The engine's seeding at start is logged, not audited: the audit is the operators'.)
    assert [a[1] for a in audit] == ["add", "edit", "edit", "pause", "resume", "remove"]
    assert {a[0] for a in audit} == {"api"} and not any(SECRET in a[2] for a in audit)


@pytest.mark.parametrize(("body", "message"), [
    ({"name": "x", "url": "http://127.0.0.1:9/", "auth": {"type": "magic"}}, "auth.type: must be one of"),
    ({"name": "x", "url": "http://127.0.0.1:9/", "timeout_seconds": -2}, "timeout_seconds: must be positive"),
    ({"name": "a/b", "url": "http://127.0.0.1:9/"}, "'a/b' is not a valid destination name"),
    ({"name": "x", "url": "http://127.0.0.1:9/", "timeout_seconds": "slow"}, "timeout_seconds: expected a number"),
    ({"name": "x", "url": "http://127.0.0.1:9/", "headers": {"Authorization": "x"}}, "headers.Authorization"),
    ({"url": "http://127.0.0.1:9/"}, "name: is required"),
])
async def test_bad_input_is_400_naming_the_field_and_writes_nothing(
    engine: Any, database_url: str, body: dict[str, Any], message: str
) -> None:
    before = await _rows(database_url)
    r = await _call(engine, "POST", "/api/v1/destinations", body)
    assert r.status_code == 400 and message in r.json()["error"], r.text
    if body.get("name") == "x":  # the same change made to an existing destination
        patched = await _call(engine, "PATCH", "/api/v1/destinations/a", {k: v for k, v in body.items() if k != "name"})
        assert patched.status_code == 400, patched.text
    assert await _rows(database_url) == before


async def test_delete_with_open_jobs_is_refused_unless_open_dead(engine: Any, database_url: str, rc: Any) -> None:
    await _call(engine, "POST", "/api/v1/destinations", {"name": "slow", "url": "http://127.0.0.1:9/"})
    await _call(engine, "POST", "/api/v1/destinations/slow/pause")
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await conn.execute("INSERT INTO distribution_jobs (distribution_id, destination_name, payload, status)"
                           " SELECT gen_random_uuid(), 'slow', '\\x7b7d', s"
                           " FROM unnest(ARRAY['queued', 'paused', 'retrying']) AS s")
        await conn.commit()
    refused = await _call(engine, "DELETE", "/api/v1/destinations/slow")
    assert refused.status_code == 409 and "3 unfinished job(s)" in refused.json()["error"]
    bad = await _call(engine, "DELETE", "/api/v1/destinations/slow?open=later")
    assert bad.status_code == 400
    done = await _call(engine, "DELETE", "/api/v1/destinations/slow?open=dead")
    assert done.status_code == 200 and done.json()["parked"] == 3
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT status, last_error_code, count(*) FROM distribution_jobs"
                                 " WHERE destination_name = 'slow' GROUP BY 1, 2")
        assert await cur.fetchall() == [("dead", "DESTINATION_REMOVED", 3)]
    dlq = rc.xrange(keys.DLQ)
    assert [f["reason"] for _, f in dlq] == ["destination_removed"] * 3


async def test_cli_doors(engine: Any, env_for: dict[str, str], tmp_path: Path, database_url: str) -> None:
    env = {**env_for, "MS07_CONFIG": str(write_config(tmp_path / "c.yaml", {}))}
    file = tmp_path / "d.json"
    file.write_text(json.dumps({"name": "cli", "url": "http://127.0.0.1:9/x"}))
    dry = await acli(["destinations", "add", "-f", str(file), "--dry-run"], env)
    assert dry.exit_code == 0 and "valid (dry run)" in dry.output, dry.output
    assert [r[0] for r in await _rows(database_url)] == ["a"]
    added = await acli(["destinations", "add", "-f", str(file), "--yes"], env)
    assert added.exit_code == 0 and "cli: added" in added.output, added.output
    edited = await acli(["destinations", "edit", "cli", "--set", "timeout_seconds=7", "--set", "pool.max_connections=3",
                         "--yes"], env)
    assert edited.exit_code == 0 and "cli: pool.max_connections, timeout_seconds" in edited.output, edited.output
    bad = await acli(["destinations", "edit", "cli", "--set", "timeout_seconds=-1", "--yes"], env)
    assert bad.exit_code == 2 and "timeout_seconds: must be positive" in bad.output and "Traceback" not in bad.output
    paused = await acli(["destinations", "pause", "cli", "--yes"], env)
    assert paused.exit_code == 0 and "cli: paused" in paused.output
    resumed = await acli(["destinations", "resume", "cli", "--yes"], env)
    assert resumed.exit_code == 0 and "cli: resumed" in resumed.output
    listed = await acli(["destinations", "list", "--json"], env)
    assert [d["name"] for d in json.loads(listed.output)] == ["a", "cli"]
    submitted = await acli(["submit", "--destination", "cli", "--data", "{}"], env)  # not in the config file
    assert submitted.exit_code == 0, submitted.output
    refused = await acli(["destinations", "remove", "cli", "--yes"], env)
    assert refused.exit_code == 1 and "1 unfinished job(s)" in refused.output, refused.output
    removed = await acli(["destinations", "remove", "cli", "--open", "dead", "--yes"], env)
    assert removed.exit_code == 0 and "cli: removed; 1 job(s) parked in the DLQ" in removed.output
    unknown = await acli(["destinations", "pause", "nope", "--yes"], env)
    assert unknown.exit_code == 4 and "unknown destination 'nope'" in unknown.output


async def test_cli_replay_and_check_know_a_destination_added_at_runtime(
        engine: Any, sink: Sink, env_for: dict[str, str], tmp_path: Path, database_url: str) -> None:
    """The operator's commands work on the destinations in force, not only the config's:
    `destinations check` probes one added through the API, and a replay gives its jobs
    that destination's attempt budget (7 here, the config's default is another)."""
    env = {**env_for, "MS07_CONFIG": str(write_config(tmp_path / "c.yaml", {}))}
    added = await _call(engine, "POST", "/api/v1/destinations",
                        {"name": "crm", "url": sink.url("/crm"), "max_attempts": 7})
    assert added.status_code == 201, added.text
    submitted = await _call(engine, "POST", "/api/v1/distributions", {"destinations": ["crm"], "payload": {"n": 1}})
    assert submitted.status_code == 202, submitted.text

    async def delivered() -> bool:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            cur = await conn.execute("SELECT count(*) FROM distribution_jobs WHERE destination_name = 'crm'"
                                     " AND status = 'delivered'")
            return (await cur.fetchone())[0] == 1

    from tests.support import wait_for

    await wait_for(delivered, what="the crm job delivered")
    probe = await acli(["destinations", "check", "crm", "--json"], env)
    assert probe.exit_code == 0, probe.output
    assert [r["name"] for r in json.loads(probe.output)] == ["crm"]
    replay = await acli(["replay", "-d", "crm", "--status", "delivered", "--include-delivered", "--yes",
                         "--json"], env)
    assert replay.exit_code == 0, replay.output
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT max_attempts FROM distribution_jobs WHERE destination_name = 'crm'")
        [max_attempts] = await cur.fetchone()
    assert max_attempts == 1 + 7  # its one attempt before the replay, then crm's budget

