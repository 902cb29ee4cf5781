"""Destinations live on every replica (issue 20, step 3): two real engine processes under
load learn of a destination added through the API within a second; a URL change sends
the next deliveries to the new URL and loses none of those in flight; an engine whose
LISTEN connection is killed listens again and catches up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
from aiohttp import web

from ms07.config import Settings
from tests.support import EngineProcess, Sink, destination, wait_for, write_config


def slow(seconds: float) -> Any:
    async def respond(request: web.Request, n: int) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.json_response({"ok": True})

    return respond


def _port(proc: EngineProcess) -> int:
    [port] = [r["metadata"]["http_port"] for r in proc.log_lines() if r.get("message") == "engine started"]
    return int(port)


async def _submit(http: httpx.AsyncClient, port: int, dest: str) -> str | None:
    r = await http.post(f"http://127.0.0.1:{port}/api/v1/distributions",
                        json={"destinations": [dest], "payload": {"t": time.time()}})
    if r.status_code != 202:
        return None
    return str(r.json()["distributions"][0]["distribution_id"])


async def _url_of(http: httpx.AsyncClient, port: int, dest: str) -> str | None:
    r = await http.get(f"http://127.0.0.1:{port}/health/detailed")
    found = [d["url"] for d in r.json()["destinations"] if d["name"] == dest]
    return found[0] if found else None


async def test_two_engines_under_load_follow_an_add_and_a_url_change(
    make_settings: Callable[..., Settings], env_for: dict[str, str], tmp_path: Path, sink: Sink, database_url: str
) -> None:
    make_settings()  # this test's database and Redis
    config = write_config(tmp_path / "config.yaml", {
        "service": {"http_port": 0, "drain_grace_seconds": 3, "heartbeat_interval_seconds": 1},
        "distribution": {"timeout_seconds": 5, "claim_idle_seconds": 20, "retry_base_delay_seconds": 0.05},
        "destinations": [destination("base", sink.url("/base"))],
    })
    sink.on("/new", slow(0.3))  # deliveries still running when the URL changes
    engines = [EngineProcess(config, env_for, tmp_path / f"engine-{i}.log") for i in range(2)]
    try:
        for proc in engines:
            proc.start()
            await wait_for(proc.started, timeout=30, what="engine started")
        ports = [_port(p) for p in engines]
        submitted: dict[str, list[tuple[float, str]]] = {"base": [], "new": []}
        stop = asyncio.Event()
        loads: list[asyncio.Task[None]] = []

        async with httpx.AsyncClient(timeout=10) as http:
            async def load(dest: str) -> None:  # steady submissions through both engines
                i = 0
                while not stop.is_set():
                    did = await _submit(http, ports[i % 2], dest)
                    if did is not None:
                        submitted[dest].append((time.monotonic(), did))
                    i += 1
                    await asyncio.sleep(0.005)

            try:
                loads.append(asyncio.create_task(load("base")))
                await wait_for(lambda: len(submitted["base"]) > 20, what="load running")

                # Added through one engine's API: both take submissions for it within a second.
                added = await http.post(f"http://127.0.0.1:{ports[0]}/api/v1/destinations",
                                        json={"name": "new", "url": sink.url("/new")})
                assert added.status_code == 201, added.text
                t0 = time.monotonic()
                known_after = []
                for port in ports:
                    await wait_for(lambda port=port: _submit(http, port, "new"), timeout=5, interval=0.01,
                                   what=f"engine on {port} accepts 'new'")
                    known_after.append(time.monotonic() - t0)
                assert max(known_after) < 1.0, known_after
                loads.append(asyncio.create_task(load("new")))
                await wait_for(lambda: len(sink.unique_keys("/new")) >= 20, timeout=20, what="deliveries to /new")

                # The URL changes under load: what is sent after both engines switched goes to
                # the new URL; every delivery started on the old one completes there.
                changed = await http.patch(f"http://127.0.0.1:{ports[1]}/api/v1/destinations/new",
                                           json={"url": sink.url("/new2")})
                assert changed.status_code == 200, changed.text
                t1 = time.monotonic()
                for port in ports:
                    await wait_for(lambda port=port: _new_url(http, port, sink), timeout=5, interval=0.01,
                                   what="new URL in force")
                switched = time.monotonic()
                assert switched - t1 < 1.0, switched - t1
                await wait_for(lambda: len([1 for t, _ in submitted["new"] if t > switched]) >= 30, timeout=20,
                               what="submissions after the switch")

            finally:
                stop.set()
                results = await asyncio.gather(*loads, return_exceptions=True)
            assert not [r for r in results if isinstance(r, BaseException)], results

        ids = {d for _, d in submitted["new"]}
        after = {d for t, d in submitted["new"] if t > switched}

        async def all_delivered() -> bool:
            async with await psycopg.AsyncConnection.connect(database_url) as conn:
                cur = await conn.execute("SELECT count(*) FILTER (WHERE status = 'delivered'), count(*)"
                                         " FROM distribution_jobs")
                done, total = await cur.fetchone()  # type: ignore[misc]
            return bool(done == total)

        await wait_for(all_delivered, timeout=30, what="every job delivered")
        old, new = sink.unique_keys("/new"), sink.unique_keys("/new2")
        assert after <= new and not after & old  # the next deliveries: the new URL only
        assert ids <= old | new  # none lost, the in-flight ones included
        assert len(old) > 0 and len(new) > 0
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            cur = await conn.execute("SELECT count(DISTINCT worker_id) FROM distribution_attempts"
                                     " WHERE destination_name = 'new'")
            assert (await cur.fetchone()) == (2,)  # both engines delivered to it
            cur = await conn.execute("SELECT count(*) FROM distribution_attempts WHERE status <> 'success'")
            assert (await cur.fetchone()) == (0,)  # no delivery cut short by the switch
    finally:
        for proc in engines:
            proc.terminate()
        for proc in engines:
            try:
                proc.wait(15)
            except Exception:
                proc.kill()


async def _new_url(http: httpx.AsyncClient, port: int, sink: Sink) -> bool:
    return await _url_of(http, port, "new") == sink.url("/new2")


async def test_a_killed_listen_connection_is_listened_again(
    make_settings: Callable[..., Settings], start_engine: Callable[..., Any], sink: Sink, database_url: str
) -> None:
    engine = await start_engine(make_settings(destinations=[destination("a", sink.url("/a"))]))
    await wait_for(engine.live.listening.is_set, what="listening")
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                 " WHERE application_name = 'ms07-destination-updates'")
        assert await cur.fetchall() == [(True,)]
    await wait_for(lambda: not engine.live.listening.is_set(), timeout=5, interval=0.01, what="connection lost")
    await wait_for(engine.live.listening.is_set, timeout=5, what="listening again")
    async with engine.pool.connection() as conn:
        from ms07.ops import dest_admin

        await dest_admin.add(conn, engine.settings, {"name": "b", "url": sink.url("/b")}, operator="t")
    await wait_for(lambda: "b" in engine.clients, timeout=2, what="the change seen after the reconnect")
