"""Submitting and reading distributions: the HTTP API and the CLI, with their contracts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from ms07 import keys
from tests.support import Sink, acli, check_response, status, wait_for


@pytest.fixture
async def engine(make_settings, sink: Sink, start_engine) -> Any:
    return await start_engine(make_settings(destinations=[{"name": "a", "url": sink.url("/in")},
                                                          {"name": "b", "url": sink.url("/in")}]))


async def _post(engine: Any, body: Any, raw: bytes | None = None) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{engine.http_port}/api/v1/distributions"
    async with aiohttp.ClientSession() as http:
        kwargs = {"data": raw, "headers": {"Content-Type": "application/json"}} if raw is not None else {"json": body}
        async with http.post(url, **kwargs) as r:
            check_response("POST", url, r.status, r.headers, await r.read())
            return r.status, await r.json()


async def _counts(engine: Any) -> tuple[int, int]:
    async with engine.pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM distribution_jobs")
        rows = (await cur.fetchone())[0]
    return rows, await engine.queue.redis.xlen(keys.stream("default"))


async def test_api_submit_one_job_per_destination_sharing_a_correlation(engine: Any, sink: Sink) -> None:
    code, data = await _post(engine, {"destinations": ["a", "b"], "payload": {"r": 1}, "correlation_id": "c-1"})
    assert code == 202
    assert set(data) == {"distributions", "correlation_id"} and data["correlation_id"] == "c-1"
    assert [d["destination"] for d in data["distributions"]] == ["a", "b"]
    ids = {d["distribution_id"] for d in data["distributions"]}
    await wait_for(lambda: sink.unique_keys() == ids, what="both delivered")
    did = data["distributions"][0]["distribution_id"]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{engine.http_port}/api/v1/distributions/{did}") as r:
            body = await r.json()
            check_response("GET", str(r.url), r.status, r.headers, await r.read())
            assert r.status == 200
    assert {"distribution_id", "destination", "status", "attempts"} <= set(body)
    await wait_for(lambda: _delivered_status(engine, did), what="status delivered")


async def _delivered_status(engine: Any, did: str) -> bool:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{engine.http_port}/api/v1/distributions/{did}") as r:
            body = await r.json()
            check_response("GET", str(r.url), r.status, r.headers, await r.read())
    return body["status"] == "delivered" and body["attempts"][0]["response_status_code"] == 200


async def test_api_idempotency_key_replays_instead_of_creating(engine: Any) -> None:
    body = {"destinations": ["a"], "payload": {"r": 1}, "idempotency_key": "order-42"}
    code1, first = await _post(engine, body)
    code2, again = await _post(engine, body)
    assert (code1, code2) == (202, 200)
    assert again == first
    # Concurrent duplicates land in one group commit: still one job.
    results = await asyncio.gather(*(_post(engine, {**body, "idempotency_key": "order-43"}) for _ in range(10)))
    assert len({r[1]["distributions"][0]["distribution_id"] for r in results}) == 1
    rows, _ = await _counts(engine)
    assert rows == 2


@pytest.mark.parametrize("body, raw, code, message", [
    ({"destinations": ["nope"], "payload": {}}, None, 422, "unknown destination 'nope'"),
    (None, b"{not json", 400, "not valid JSON"),
    ({"destinations": ["a"]}, None, 400, "payload is required"),
    ({"destinations": [], "payload": {}}, None, 400, "destinations must be a non-empty list"),
    ({"destinations": ["a"], "payload": {}, "extra": 1}, None, 400, "unknown field 'extra'"),
    ({"destinations": ["a", "a"], "payload": {}}, None, 400, "named twice"),
    ({"destinations": ["a"], "payload": {}, "priority": "urgent"}, None, 400, "unknown priority"),
    ([1, 2], None, 400, "must be a JSON object"),
])
async def test_api_bad_input_is_refused_with_nothing_written(engine: Any, body: Any, raw: bytes | None, code: int,
                                                             message: str) -> None:
    got, data = await _post(engine, body, raw)
    assert got == code and message in data["error"]
    assert await _counts(engine) == (0, 0)


async def test_api_refuses_while_draining(engine: Any) -> None:
    engine.request_stop("test")
    code, data = await _post(engine, {"destinations": ["a"], "payload": {}})
    assert code == 503 and "draining" in data["error"]


async def test_cli_submit_status_and_dlq(engine: Any, sink: Sink, env_for: dict[str, str], tmp_path: Path) -> None:
    sink.on("/gone", status(410))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"destinations": [{"name": "a", "url": sink.url("/in")},
                                                    {"name": "g", "url": sink.url("/gone")}]}))
    base = ["--config", str(cfg)]
    payload = tmp_path / "p.json"
    payload.write_text('{"report": 7}')
    result = await acli([*base, "submit", "-d", "a", "--file", str(payload), "--json"], env_for)
    assert result.exit_code == 0, result.output
    [d] = json.loads(result.output)["distributions"]
    await wait_for(lambda: d["distribution_id"] in sink.unique_keys(), what="delivered")
    await wait_for(lambda: _delivered_status(engine, d["distribution_id"]))
    result = await acli([*base, "status", d["distribution_id"], "--json"], env_for)
    status_json = json.loads(result.output)
    assert status_json["status"] == "delivered"
    assert set(status_json["attempts"][0]) >= {"attempt", "status", "response_status_code", "error_code",
                                               "started_at", "completed_at"}
    # PostgreSQL holds the destinations: the file's "g" is applied first (issue 20).
    result = await acli([*base, "destinations", "sync"], env_for)
    assert result.exit_code == 0, result.output
    await wait_for(lambda: "g" in engine.clients, timeout=2, what="g live on the engine")
    result = await acli([*base, "submit", "-d", "g", "--data", "{}", "--json"], env_for)
    gone = json.loads(result.output)["distributions"][0]["distribution_id"]
    await wait_for(lambda: _dlq_has(engine, gone), what="parked")
    result = await acli([*base, "dlq", "list", "--json"], env_for)
    listing = json.loads(result.output)
    assert [p["distribution_id"] for p in listing["parked_jobs"]] == [gone]
    assert listing["parked_jobs"][0]["reason"] == "permanent_failure"
    result = await acli([*base, "dlq", "purge"], env_for)
    assert result.exit_code == 2 and "--yes" in result.output
    result = await acli([*base, "dlq", "purge", "--yes"], env_for)
    assert result.exit_code == 0 and "purged 1 parked job(s)" in result.output
    assert await engine.queue.redis.xlen(keys.DLQ) == 0


async def _dlq_has(engine: Any, did: str) -> bool:
    return any(f.get("distribution_id") == did for _, f in await engine.queue.dlq_entries())


@pytest.mark.parametrize("args, code, message", [
    (["submit", "-d", "a", "--data", "{bad"], 2, "payload is not valid JSON"),
    (["submit", "-d", "a"], 2, "exactly one of --data or --file"),
    (["submit", "-d", "a", "--data", "@payload.json"], 2,
     "--data takes the JSON itself, not a file: use --file payload.json"),
    (["submit", "-d", "zzz", "--data", "{}"], 2, "unknown destination 'zzz'"),
    (["status", "00000000-0000-0000-0000-000000000000"], 4, "no distribution"),
    (["status", "not-a-uuid"], 2, "is not a distribution id"),
    (["dlq", "replay", "not-a-uuid"], 2, "is not a distribution id"),
    (["dlq", "replay"], 2, "nothing to replay: give distribution ids, or --all"),
])
async def test_cli_bad_input_one_line(engine: Any, env_for: dict[str, str], tmp_path: Path, args: list[str],
                                      code: int, message: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"destinations": [{"name": "a", "url": "http://127.0.0.1:9/in"}]}))
    result = await acli(["--config", str(cfg), *args], env_for)
    assert result.exit_code == code, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert await _counts(engine) == (0, 0)
