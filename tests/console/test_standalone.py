"""``ms07 console``: the same pages with no engine up, reading PostgreSQL and Redis directly."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.console.conftest import OPERATOR_TOKEN, VIEWER_TOKEN, csrf_of, log_in
from tests.support import acli, submit_n, wait_for


async def test_the_console_serves_the_history_with_the_engine_stopped(
        console_engine: Any, client: aiohttp.ClientSession) -> None:
    from ms07.console import standalone

    [did] = await submit_n(console_engine, "hooks", 1, payload={"order": 42})

    async def delivered() -> bool:
        async with console_engine.pool.connection() as conn:
            cur = await conn.execute("SELECT status FROM distribution_jobs WHERE distribution_id = %s", (did,))
            return (await cur.fetchone())[0] == "delivered"

    await wait_for(delivered, what="the job delivered")
    settings = console_engine.settings
    await console_engine.stop(grace=1)  # no engine from here on

    running = await standalone.start(settings, 0, "127.0.0.1")
    try:
        url = f"http://127.0.0.1:{running.port}"
        async with client.get(f"{url}/", allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/console/"
        assert (await log_in(client, url, OPERATOR_TOKEN)).status == 303
        async with client.get(f"{url}/console/overview.json") as resp:
            numbers = await resp.json()
        assert numbers["rates"]["delivered"] == 1 and numbers["dlq_size"] == 0
        async with client.get(f"{url}/console/distributions/{did}") as resp:
            page = await resp.text()
        assert resp.status == 200 and "&#34;order&#34;: 42" in page and "delivered" in page
        async with client.get(f"{url}/console/destinations/hooks") as resp:
            token = csrf_of(await resp.text())
        async with client.post(f"{url}/console/destinations/hooks/check", data={"csrf": token}) as resp:
            assert resp.status == 200 and 'id="probe"' in await resp.text()
        async with client.get(f"{url}/api/v1/distributions", headers={"Authorization": f"Bearer {VIEWER_TOKEN}"}) as r:
            assert r.status == 404  # the console alone serves no API
    finally:
        await running.close()


async def test_ms07_console_refuses_to_start_without_a_token(env_for: dict[str, str]) -> None:
    result = await acli(["console", "--http-port", "0"], env_for)
    assert result.exit_code == 2
    assert "no API token" in result.output and "Traceback" not in result.output
    result = await acli(["console", "--http-port", "70000"], env_for)
    assert result.exit_code != 0 and "is not a TCP port" in result.output


async def test_a_store_out_of_reach_is_a_503_page_not_a_traceback(make_settings: Any,
                                                                   client: aiohttp.ClientSession) -> None:
    from ms07.console import standalone

    settings = make_settings(redis_url="redis://127.0.0.1:9/0")  # nothing listens on the discard port
    running = await standalone.start(settings, 0, "127.0.0.1")
    try:
        async with client.get(f"http://127.0.0.1:{running.port}/console/") as resp:
            page = await resp.text()
        assert resp.status == 503 and "does not answer" in page and "Traceback" not in page
        assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'")
    finally:
        await running.close()
