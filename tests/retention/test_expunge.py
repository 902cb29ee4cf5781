"""Expunge: the payload goes, the record stays, an audit row says who; every reader copes,
and an expunged job cannot be replayed."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from ms07.store.status import JobStatus
from tests.support import Sink, acli, check_response, status, submit_n, wait_for


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async def conforms(response: httpx.Response) -> None:
        await response.aread()
        check_response(response.request.method, str(response.url), response.status_code, response.headers,
                       response.content)

    async with httpx.AsyncClient(timeout=15.0, event_hooks={"response": [conforms]}) as client:
        yield client


async def _row(engine: Any, did: str) -> tuple[str, int, Any]:
    async with engine.pool.connection() as conn:
        cur = await conn.execute("SELECT status, octet_length(payload), payload_expunged_at FROM distribution_jobs"
                                 " WHERE distribution_id = %s", (did,))
        row = await cur.fetchone()
    assert row is not None
    return row[0], row[1], row[2]


async def _audit(engine: Any) -> list[dict[str, Any]]:
    async with engine.pool.connection() as conn:
        cur = await conn.execute("SELECT operator, plan, outcome, detail FROM recovery_audit WHERE plan = 'expunge'"
                                 " ORDER BY id")
        return [{"operator": r[0], "plan": r[1], "outcome": r[2], "detail": r[3]} for r in await cur.fetchall()]


async def _engine_with_jobs(make_settings, sink: Sink, start_engine) -> tuple[Any, str, str, str]:
    """An engine with a delivered job, a dead one and an open one (never enqueued)."""
    sink.on("/down", status(500))
    engine = await start_engine(make_settings(
        destinations=[{"name": "ok", "url": sink.url("/ok")}, {"name": "down", "url": sink.url("/down")}],
        distribution={"max_attempts": 1}))
    [delivered] = await submit_n(engine, "ok", payload={"secret": "customer-data-1"})
    [dead] = await submit_n(engine, "down", payload={"secret": "customer-data-2"})
    await wait_for(lambda: _is(engine, delivered, JobStatus.DELIVERED), what="delivered")
    await wait_for(lambda: _is(engine, dead, JobStatus.DEAD), what="dead")
    open_job = str(uuid.uuid4())
    async with engine.pool.connection() as conn:
        await conn.execute("INSERT INTO distribution_jobs (distribution_id, destination_name, status, payload)"
                           " VALUES (%s, 'ok', %s, '{}')", (open_job, JobStatus.QUEUED.value))
    return engine, delivered, dead, open_job


async def _is(engine: Any, did: str, want: str) -> bool:
    return (await _row(engine, did))[0] == want


async def test_delete_payload_keeps_the_record_and_audits(make_settings, sink: Sink, start_engine,
                                                          http: httpx.AsyncClient) -> None:
    engine, delivered, _, open_job = await _engine_with_jobs(make_settings, sink, start_engine)
    base = f"http://127.0.0.1:{engine.http_port}/api/v1/distributions"
    r = await http.delete(f"{base}/{delivered}/payload", headers={"X-Operator": "dpo"})
    assert r.status_code == 204 and r.content == b""
    state, size, when = await _row(engine, delivered)
    assert (state, size) == (JobStatus.DELIVERED, 0) and when is not None
    shown = (await http.get(f"{base}/{delivered}")).json()
    assert shown["status"] == "delivered" and shown["payload_expunged_at"] is not None
    assert [a["status"] for a in shown["attempts"]] == ["success"]  # the record stays
    page = (await http.get(base, params={"destination": "ok"})).json()
    assert [d["payload_expunged_at"] is not None for d in page["distributions"]
            if d["distribution_id"] == delivered] == [True]
    assert (await http.delete(f"{base}/{delivered}/payload")).status_code == 204  # again: harmless
    audit = await _audit(engine)
    assert len(audit) == 1
    assert audit[0]["operator"] == "dpo" and audit[0]["outcome"] == "done"
    assert audit[0]["detail"]["distribution_id"] == delivered and audit[0]["detail"]["payload_bytes"] > 0
    assert "customer-data" not in json.dumps(audit)

    assert (await http.delete(f"{base}/{uuid.uuid4()}/payload")).status_code == 404
    assert (await http.delete(f"{base}/not-an-id/payload")).status_code == 404
    r = await http.delete(f"{base}/{open_job}/payload")
    assert r.status_code == 409 and "not finished" in r.json()["error"]
    assert (await _row(engine, open_job))[1] == 2  # untouched
    assert len(await _audit(engine)) == 1


async def test_an_expunged_job_is_not_replayed(make_settings, sink: Sink, start_engine, env_for: dict[str, str],
                                               http: httpx.AsyncClient) -> None:
    engine, _, dead, _ = await _engine_with_jobs(make_settings, sink, start_engine)
    refused = await acli(["jobs", "expunge", dead], env_for)  # not at a terminal: --yes is required
    assert refused.exit_code == 2 and "--yes" in refused.output
    assert (await _row(engine, dead))[2] is None
    done = await acli(["jobs", "expunge", dead, "--yes"], env_for)
    assert done.exit_code == 0, done.output
    assert "expunged 1 payload(s)" in done.stdout
    before = len(sink.received)

    replay = await acli(["dlq", "replay", dead], env_for)
    assert replay.exit_code == 1
    assert f"{dead} not replayed: its payload was expunged" in replay.output
    base = f"http://127.0.0.1:{engine.http_port}/api/v1"
    r = await http.post(f"{base}/replays", json={"status": ["dead"]})
    assert r.status_code == 202
    rid = r.json()["replay_id"]
    final = await wait_for(lambda: _replay_done(http, f"{base}/replays/{rid}"), what="the replay to finish")
    assert (final["enqueued"], final["skipped"]) == (0, 1)
    assert (await _row(engine, dead))[:2] == (JobStatus.DEAD, 0)
    assert len(sink.received) == before  # nothing was sent again


async def _replay_done(http: httpx.AsyncClient, url: str) -> dict[str, Any] | None:
    body = (await http.get(url)).json()
    return body if body["status"] == "done" else None


async def test_cli_expunge_bad_input(make_settings, sink: Sink, start_engine, env_for: dict[str, str]) -> None:
    engine, delivered, _, open_job = await _engine_with_jobs(make_settings, sink, start_engine)
    bad = await acli(["jobs", "expunge", delivered, "nope", "--yes"], env_for)
    assert bad.exit_code == 2 and "'nope' is not a distribution id" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    assert (await _row(engine, delivered))[2] is None  # nothing done
    unknown = str(uuid.uuid4())
    mixed = await acli(["jobs", "expunge", unknown, open_job, "--yes"], env_for)
    assert mixed.exit_code == 4
    assert f"no distribution {unknown}" in mixed.output and f"{open_job} not expunged" in mixed.output
    assert (await _row(engine, open_job))[1] == 2


async def test_the_read_only_token_cannot_expunge(make_settings, sink: Sink, start_engine, http: httpx.AsyncClient,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MS07_API_TOKEN", "operator-token-5d1e")
    monkeypatch.setenv("MS07_API_READ_TOKEN", "viewer-token-8c2a")
    engine, delivered, _, _ = await _engine_with_jobs(make_settings, sink, start_engine)
    url = f"http://127.0.0.1:{engine.http_port}/api/v1/distributions/{delivered}/payload"
    r = await http.delete(url, headers={"Authorization": "Bearer viewer-token-8c2a"})
    assert r.status_code == 403
    assert (await _row(engine, delivered))[2] is None and await _audit(engine) == []
    r = await http.delete(url, headers={"Authorization": "Bearer operator-token-5d1e"})
    assert r.status_code == 204 and (await _row(engine, delivered))[1] == 0
