"""``ms07 dlq replay`` and ``purge``: the same confirmation, messages that name each id."""

from __future__ import annotations

import asyncio
import os
import select
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support import Sink, acli, status, submit_n, wait_for


@pytest.fixture
async def engine(make_settings, sink: Sink, start_engine) -> Any:
    sink.on("/gone", status(410))
    return await start_engine(make_settings(destinations=[{"name": "a", "url": sink.url("/in")},
                                                          {"name": "g", "url": sink.url("/gone")}]))


async def _status(engine: Any, did: str) -> str | None:
    async with engine.pool.connection() as conn:
        cur = await conn.execute("SELECT status FROM distribution_jobs WHERE distribution_id = %s", (did,))
        row = await cur.fetchone()
    return row[0] if row else None


@pytest.fixture
async def parked_and_delivered(engine: Any) -> tuple[str, str]:
    [parked] = await submit_n(engine, "g")
    [delivered] = await submit_n(engine, "a")
    await wait_for(lambda: _is(engine, parked, "failed"), what="parked")
    await wait_for(lambda: _is(engine, delivered, "delivered"), what="delivered")
    return parked, delivered


async def _is(engine: Any, did: str, want: str) -> bool:
    return await _status(engine, did) == want


@pytest.mark.parametrize("args, message", [
    (["dlq", "replay"], "nothing to replay: give distribution ids, or --all"),
    (["dlq", "replay", "--all", str(uuid.uuid4())], "give distribution ids or --all, not both"),
    (["dlq", "replay", "--all"], "replay --all puts every parked distribution back in the queue; add --yes"),
    (["dlq", "purge"], "purge deletes parked distributions for good; add --yes"),
])
async def test_usage_is_one_precise_line_and_nothing_changes(engine: Any, parked_and_delivered: tuple[str, str],
                                                            env_for: dict[str, str], args: list[str],
                                                            message: str) -> None:
    parked, _ = parked_and_delivered
    result = await acli(args, env_for)
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {message}") and len(result.output.strip().splitlines()) == 1
    assert await _status(engine, parked) == "failed"


async def test_replay_names_each_id_it_did_not_replay(engine: Any, parked_and_delivered: tuple[str, str],
                                                      env_for: dict[str, str]) -> None:
    parked, delivered = parked_and_delivered
    unknown = str(uuid.uuid4())
    result = await acli(["dlq", "replay", delivered], env_for)
    assert result.exit_code == 1, result.output
    assert f"{delivered} not replayed: it is delivered, not parked" in result.output
    result = await acli(["dlq", "replay", delivered, unknown, parked, "--json"], env_for)
    assert result.exit_code == 4, result.output  # an id naming no distribution: NotFound
    assert f"no distribution {unknown}" in result.output
    assert f"{delivered} not replayed: it is delivered, not parked" in result.output
    assert f'"replayed": [\n    "{parked}"\n  ]' in result.output
    assert await _status(engine, parked) in ("queued", "processing", "failed")


async def test_replay_all_with_yes(engine: Any, parked_and_delivered: tuple[str, str], env_for: dict[str, str]) -> None:
    result = await acli(["dlq", "replay", "--all", "--yes"], env_for)
    assert result.exit_code == 0 and "replayed 1 distribution(s)" in result.output, result.output


def _at_a_terminal(args: list[str], env: dict[str, str], answer: bytes, timeout: float = 60.0) -> tuple[int, str]:
    """Run ``python -m ms07 ARGS`` with a pseudo-terminal as stdin/stdout; answer the prompt."""
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "ms07", *args], stdin=slave, stdout=slave, stderr=slave,  # noqa: S603
                            env={**os.environ, **env}, close_fds=True)
    os.close(slave)
    out = b""
    answered = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
                if not answered and b"[y/n]" in out:
                    os.write(master, answer)
                    answered = True
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=max(1.0, deadline - time.monotonic())), out.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


async def test_replay_all_asks_at_a_terminal(engine: Any, parked_and_delivered: tuple[str, str],
                                            env_for: dict[str, str], tmp_path: Path) -> None:
    parked, _ = parked_and_delivered
    code, out = await asyncio.to_thread(_at_a_terminal, ["dlq", "replay", "--all"], env_for, b"n\n")
    assert code == 1 and "Replay every parked distribution?" in out and "not confirmed" in out, out
    assert await _status(engine, parked) == "failed"
    code, out = await asyncio.to_thread(_at_a_terminal, ["dlq", "replay", "--all"], env_for, b"y\n")
    assert code == 0 and "replayed 1 distribution(s)" in out, out
