"""The submit API while PostgreSQL is down: a JSON 503 to retry, never a bare 500; the
retry with the same idempotency key after it is back makes exactly one job."""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest

from tests.support import Sink, destination, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.loop_errors_ok]


async def test_submit_answers_503_json_while_postgres_is_down(servers, make_settings, sink: Sink,
                                                              start_engine) -> None:
    if not servers.embedded:
        pytest.skip("needs the embedded PostgreSQL to stop it")
    from pgserver._commands import pg_ctl

    engine = await start_engine(make_settings(destinations=[destination("a", sink.url("/in"))]))
    url = f"http://127.0.0.1:{engine.http_port}/api/v1/distributions"
    body = {"destinations": ["a"], "payload": {"x": 1}, "idempotency_key": "outage-1"}
    user = "pgserver" if os.geteuid() == 0 else None
    pgdata = servers.state_dir / "postgres"
    await asyncio.to_thread(pg_ctl, ["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(url, json=body)
            assert r.status_code == 503 and r.json() == {"error": "storage unavailable; retry later"}
    finally:
        # restart, not start: it reuses the options (socket directory) of the last run
        await asyncio.to_thread(pg_ctl, ["-w", "restart"], pgdata=pgdata, user=user)

    async def accepted() -> list[str] | None:
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(url, json=body)
        return [d["distribution_id"] for d in r.json()["distributions"]] if r.status_code in (200, 202) else None

    first = await wait_for(accepted, timeout=30, interval=0.5, what="accepted once PostgreSQL is back")
    assert await accepted() == first  # the same key again: the same job, no second one
    await wait_for(lambda: sink.unique_keys("/in") == set(first), what="delivered")
