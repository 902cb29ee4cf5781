"""A replay stopped half-way (Ctrl-C, then SIGKILL) and run again: every selected job is
put on the queue exactly once by the replay."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ms07 import keys
from tests.cli.test_jobs import insert

STARTED: list[subprocess.Popen[bytes]] = []


def _replay(env: dict[str, str], out: Path) -> subprocess.Popen[bytes]:
    with out.open("ab") as log:
        proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "ms07", "replay", "--destination", "a", "--status", "dead", "--rate", "25",
             "--yes"], env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    STARTED.append(proc)
    return proc


@pytest.fixture(autouse=True)
def _no_leftover_replays() -> Iterator[None]:
    yield
    while STARTED:  # a failed assertion must not leave a replay running
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _progress(database_url: str) -> tuple[str, int]:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT status, enqueued FROM replays").fetchone()
    return (row[0], row[1]) if row else ("none", 0)


def _wait_enqueued(database_url: str, at_least: int, proc: subprocess.Popen[bytes], out: Path) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        _, enqueued = _progress(database_url)
        if enqueued >= at_least:
            return enqueued
        assert proc.poll() is None, out.read_text()
        time.sleep(0.05)
    raise AssertionError(f"the replay did not reach {at_least} enqueued jobs")


def _entries(rc: Any) -> Counter[str]:
    return Counter(fields["id"] for _, fields in rc.xrange(keys.stream("default")))


def test_replay_interrupted_then_killed_then_resumed_enqueues_each_job_once(
        database_url: str, env_for: dict[str, str], rc: Any, tmp_path: Path) -> None:
    out = tmp_path / "replay.out"
    selected = set(insert(database_url, 200, status="dead", error_code="HTTP_500"))
    insert(database_url, 20, destination="b", status="dead")  # not selected

    first = _replay(env_for, out)
    _wait_enqueued(database_url, 25, first, out)
    first.send_signal(signal.SIGINT)  # Ctrl-C
    assert first.wait(30) == 130, out.read_text()
    assert "run the same command again to resume" in out.read_text()
    status, enqueued = _progress(database_url)
    assert status == "interrupted" and 25 <= enqueued < 200

    second = _replay(env_for, out)
    _wait_enqueued(database_url, enqueued + 50, second, out)
    second.kill()  # SIGKILL: no chance to say anything
    second.wait(10)
    status, enqueued = _progress(database_url)
    assert status == "running" and enqueued < 200, "the kill came too late to prove anything"

    out.write_text("")
    third = _replay(env_for, out)
    assert third.wait(60) == 0, out.read_text()
    assert "resuming replay" in out.read_text() and "200 enqueued" in out.read_text()
    counts = _entries(rc)
    assert set(counts) == selected, "a job outside the selection was enqueued, or one was not"
    assert set(counts.values()) == {1}, f"enqueued twice: {[i for i, n in counts.items() if n > 1][:5]}"
    with psycopg.connect(database_url) as conn:
        outcomes = [r[0] for r in conn.execute(
            "SELECT outcome FROM recovery_audit WHERE plan = 'replay' ORDER BY id").fetchall()]
        open_b = conn.execute("SELECT count(*) FROM distribution_jobs WHERE destination_name = 'b'"
                              " AND status <> 'dead'").fetchone()[0]
    assert outcomes == ["planned", "interrupted", "done"] and open_b == 0
