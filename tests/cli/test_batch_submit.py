"""Batch submit: ``POST /api/v1/distributions {"distributions": [...]}`` accepts every
item in one commit or none, naming each bad item; its size is bounded."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from ms07 import keys
from ms07.errors import ConfigError
from tests.support import Sink, acli, check_response, wait_for


@pytest.fixture
async def engine(make_settings, sink: Sink, start_engine) -> Any:
    return await start_engine(make_settings(
        destinations=[{"name": "a", "url": sink.url("/a")}, {"name": "b", "url": sink.url("/b")},
                      {"name": "small", "url": sink.url("/small"), "max_payload_bytes": 64}],
        service={"max_batch_items": 5}))


async def _post(engine: Any, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{engine.http_port}/api/v1/distributions"
    async with aiohttp.ClientSession() as http, http.post(url, json=body, headers=headers) as r:
        check_response("POST", url, r.status, r.headers, await r.read())
        return r.status, await r.json()


async def _written(engine: Any) -> tuple[int, int]:
    """(job rows, stream entries)."""
    async with engine.pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM distribution_jobs")
        rows = (await cur.fetchone())[0]
    return rows, await engine.queue.redis.xlen(keys.stream("default"))


async def _commits(engine: Any) -> int:
    """Distinct transactions that wrote job rows: created_at defaults to now(), the start
    of the inserting transaction (xmin would change with the delivery's UPDATE)."""
    async with engine.pool.connection() as conn:
        cur = await conn.execute("SELECT count(DISTINCT created_at) FROM distribution_jobs")
        return (await cur.fetchone())[0]


async def test_a_good_batch_is_accepted_in_one_commit(engine: Any, sink: Sink) -> None:
    items = [{"destinations": ["a", "b"], "payload": {"i": 0}, "correlation_id": "c-0"},
             {"destinations": ["a"], "payload": {"i": 1}, "priority": "default"},
             {"destinations": ["b"], "payload": "text", "idempotency_key": "k-1"}]
    code, data = await _post(engine, {"distributions": items}, {"X-Correlation-ID": "hdr-1"})
    assert code == 202, data
    answers = data["distributions"]
    assert [[d["destination"] for d in a["distributions"]] for a in answers] == [["a", "b"], ["a"], ["b"]]
    # An item's own correlation id, else the header's.
    assert [a["correlation_id"] for a in answers] == ["c-0", "hdr-1", "hdr-1"]
    assert not any(a["replayed"] for a in answers)
    assert await _written(engine) == (4, 4)
    assert await _commits(engine) == 1
    ids = {d["distribution_id"] for a in answers for d in a["distributions"]}
    await wait_for(lambda: sink.unique_keys() == ids, what="every job delivered")


async def test_one_bad_item_refuses_the_batch_and_names_it(engine: Any) -> None:
    items = [{"destinations": ["a"], "payload": {}},
             {"destinations": ["nope"], "payload": {}},
             {"destinations": ["a"], "payload": {}, "colour": "red"},
             {"destinations": ["small"], "payload": "x" * 100}]
    code, data = await _post(engine, {"distributions": items})
    assert code == 400, data
    assert data["error"].startswith("item 1: unknown destination 'nope'") and "nothing was submitted" in data["error"]
    assert [i["index"] for i in data["items"]] == [1, 2, 3]
    assert "unknown field 'colour'" in data["items"][1]["error"]
    assert "over the 64-byte limit of destination 'small'" in data["items"][2]["error"]
    assert await _written(engine) == (0, 0)
    # Every bad item of one kind: that kind's status.
    code, data = await _post(engine, {"distributions": [items[0], items[1]]})
    assert code == 422 and [i["index"] for i in data["items"]] == [1]
    assert await _written(engine) == (0, 0)


@pytest.mark.parametrize("body, code, message", [
    ({"distributions": [{"destinations": ["a"], "payload": {}}] * 6}, 413,
     "batch has 6 items, over the limit of 5 (service.max_batch_items)"),
    ({"distributions": []}, 400, "distributions must be a non-empty list"),
    ({"distributions": {"destinations": ["a"]}}, 400, "distributions must be a non-empty list"),
    ({"distributions": [{"destinations": ["a"], "payload": {}}], "payload": {}}, 400, "unknown field 'payload'"),
    ({"distributions": [[1]]}, 400, "item 0: a submission must be a JSON object"),
])
async def test_bad_batches_are_one_clear_4xx_with_nothing_written(engine: Any, body: Any, code: int,
                                                                  message: str) -> None:
    got, data = await _post(engine, body)
    assert got == code and message in data["error"], data
    assert await _written(engine) == (0, 0)


async def test_a_batch_body_over_its_byte_limit_is_413(make_settings, sink: Sink, start_engine) -> None:
    engine = await start_engine(make_settings(
        destinations=[{"name": "a", "url": sink.url("/a")}],
        distribution={"max_payload_bytes": 1024}, service={"max_batch_bytes": 200 * 1024}))
    item = {"destinations": ["a"], "payload": "x" * 1000}
    code, data = await _post(engine, {"distributions": [item] * 100})  # ~100 KiB: over 65 KiB, under 200
    assert code == 202, data
    code, data = await _post(engine, {"distributions": [item] * 100, "x": "y" * 200 * 1024})
    assert code == 413 and "service.max_batch_bytes" in data["error"], data
    # A single submission keeps its own, smaller limit.
    code, data = await _post(engine, {**item, "correlation_id": "c", "payload": "x" * 70 * 1024})
    assert code == 413 and "the largest max_payload_bytes plus 64 KiB)" in data["error"], data
    assert (await _written(engine))[0] == 100


async def test_keys_in_a_batch_behave_like_single_keyed_submits(engine: Any) -> None:
    code, first = await _post(engine, {"destinations": ["a"], "payload": {}, "idempotency_key": "k"})
    assert code == 202
    items = [{"destinations": ["a"], "payload": {}, "idempotency_key": "k"},   # seen before
             {"destinations": ["b"], "payload": {}, "idempotency_key": "n"},   # new
             {"destinations": ["b"], "payload": {}, "idempotency_key": "n"}]   # an earlier item's
    code, data = await _post(engine, {"distributions": items})
    assert code == 202, data
    a0, a1, a2 = data["distributions"]
    assert a0["distributions"] == first["distributions"] and a0["replayed"]
    assert a0["correlation_id"] == first["correlation_id"]
    assert not a1["replayed"] and a2["replayed"] and a2["distributions"] == a1["distributions"]
    assert (await _written(engine))[0] == 2
    # The whole batch again: nothing new, 200 like a repeated single submit.
    code, again = await _post(engine, {"distributions": items})
    assert code == 200 and again == data | {"distributions": [a | {"replayed": True} for a in data["distributions"]]}
    # Concurrent batches with one key: one job.
    results = await asyncio.gather(*(_post(engine, {"distributions": [items[1] | {"idempotency_key": "z"}]})
                                     for _ in range(5)))
    assert len({r[1]["distributions"][0]["distributions"][0]["distribution_id"] for r in results}) == 1
    assert (await _written(engine))[0] == 3


@pytest.mark.parametrize("service, message", [
    ({"max_batch_items": 0}, "service.max_batch_items: must be between 1 and 1000, got 0"),
    ({"max_batch_items": 1001}, "service.max_batch_items: must be between 1 and 1000"),
    ({"max_batch_bytes": 10}, "service.max_batch_bytes: must be between 1024"),
])
def test_batch_limits_are_range_checked(make_settings, service: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        make_settings(service=service)


def _config(tmp_path: Path, sink: Sink) -> list[str]:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"destinations": [{"name": "a", "url": sink.url("/a")},
                                                    {"name": "b", "url": sink.url("/b")}]}))
    return ["--config", str(cfg)]


async def test_cli_submits_a_json_lines_file_in_one_commit(engine: Any, sink: Sink, env_for: dict[str, str],
                                                           tmp_path: Path) -> None:
    lines = tmp_path / "many.jsonl"
    lines.write_text('{"destinations": ["a"], "payload": {"i": 1}}\n\n'
                     '{"destinations": ["a", "b"], "payload": [2], "idempotency_key": "k"}\n')
    result = await acli([*_config(tmp_path, sink), "submit", "--file", str(lines), "--json"], env_for)
    assert result.exit_code == 0, result.output
    answers = json.loads(result.output)["distributions"]
    assert [len(a["distributions"]) for a in answers] == [1, 2]
    assert await _written(engine) == (3, 3) and await _commits(engine) == 1
    # Found by its content too (not one JSON value, one object per line), with a default correlation.
    other = tmp_path / "batch.txt"
    other.write_text('{"destinations": ["b"], "payload": 1}\n{"destinations": ["b"], "payload": 2}\n')
    result = await acli([*_config(tmp_path, sink), "submit", "--file", str(other), "--correlation-id", "run-7"],
                        env_for)
    assert result.exit_code == 0 and len(result.output.strip().splitlines()) == 2, result.output
    assert (await _written(engine))[0] == 5


@pytest.mark.parametrize("text, args, message", [
    ('{"destinations": ["a"], "payload": 1}\n{"destinations": ["zzz"], "payload": 2}\n', [],
     "line 2: unknown destination 'zzz'"),
    ('{"destinations": ["a"], "payload": 1}\n\n{"destinations": ["a"], "payload": 2\n', [],
     "line 3: not valid JSON"),
    ('{"destinations": ["a"], "payload": 1}\n[1]\n{"destinations": ["a"]}\n', [],
     "line 2: a submission must be a JSON object (and 1 more line(s): 3); nothing was submitted"),
    ('{"destinations": ["a"], "payload": 1}\n', ["-d", "a"], "drop --destination"),
    ("\n\n", [], "no submissions"),
])
async def test_cli_a_bad_json_lines_file_is_one_line_and_nothing_written(
        engine: Any, sink: Sink, env_for: dict[str, str], tmp_path: Path, text: str, args: list[str],
        message: str) -> None:
    lines = tmp_path / "bad.jsonl"
    lines.write_text(text)
    result = await acli([*_config(tmp_path, sink), "submit", "--file", str(lines), *args], env_for)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert await _written(engine) == (0, 0)
