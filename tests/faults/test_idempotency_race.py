"""One idempotency key racing across replicas: two engine processes on one database, the
same key sent to both at once, with unrelated submissions in the same group commits. Every
keyed answer names the same distribution, nobody gets a 5xx, nothing is written twice."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.faults.harness import engine_config, exit_code
from tests.support import EngineProcess, Sink, wait_for

pytestmark = pytest.mark.faults

TOKEN = f"race-token-{secrets.token_hex(8)}"
ROUNDS = 30


def _port(proc: EngineProcess) -> int:
    [port] = [r["metadata"]["http_port"] for r in proc.log_lines() if r.get("message") == "engine started"]
    return int(port)


async def test_a_key_split_across_two_engines_answers_one_distribution_and_fails_nobody(
        tmp_path: Path, sink: Sink, env_for: dict[str, str], database_url: str) -> None:
    config = engine_config(tmp_path, [{"name": "a", "url": sink.url("/in")}])
    env = {**env_for, "MS07_API_TOKEN": TOKEN}
    procs = [EngineProcess(config, env, tmp_path / f"engine-{i}.log").start() for i in range(2)]
    keyed: list[list[tuple[int, dict[str, Any]]]] = []
    plain: list[tuple[int, dict[str, Any]]] = []
    try:
        for proc in procs:
            await wait_for(proc.started, timeout=30, what="engine started")
        clients = [httpx.AsyncClient(base_url=f"http://127.0.0.1:{_port(p)}", timeout=20,
                                     headers={"Authorization": f"Bearer {TOKEN}"}) for p in procs]
        try:
            async def post(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
                r = await client.post("/api/v1/distributions", json=body)
                return r.status_code, r.json()

            for n in range(ROUNDS):
                key = f"round-{n}-{secrets.token_hex(4)}"
                calls = [post(clients[i % 2], {"destinations": ["a"], "payload": {"n": n}, "idempotency_key": key})
                         for i in range(4)]
                calls += [post(clients[i % 2], {"destinations": ["a"], "payload": {"n": n, "i": i}})
                          for i in range(4)]
                answers = await asyncio.gather(*calls)
                keyed.append(answers[:4])
                plain.extend(answers[4:])
        finally:
            for client in clients:
                await client.aclose()
    finally:
        for proc in procs:
            proc.terminate()
        codes = [await exit_code(p) for p in procs]
        for proc in procs:
            proc.kill()
    statuses = Counter(s for round_ in keyed for s, _ in round_) + Counter(s for s, _ in plain)
    assert set(statuses) <= {200, 202}, f"answers: {dict(statuses)}"
    assert Counter(s for s, _ in plain) == {202: ROUNDS * 4}, "an unrelated submission was failed"
    for answers in keyed:
        ids = {a["distributions"][0]["distribution_id"] for _, a in answers}
        assert len(ids) == 1, f"one key, several distributions: {answers}"
        assert sorted(s for s, _ in answers) == [200, 200, 200, 202], answers  # one made it, three replayed
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT count(*) FILTER (WHERE idempotency_key IS NOT NULL),"
                                 " count(*) FILTER (WHERE idempotency_key IS NULL) FROM distribution_jobs")
        assert await cur.fetchone() == (ROUNDS, ROUNDS * 4)
    assert codes == [0, 0]
