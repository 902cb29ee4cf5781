"""Crashed workers: a lingering heartbeat key is not life; a crash whose work went on is
history (INFO), not a day-long WARNING; `ms07 workers forget` marks it seen, audited."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import redis

from ms07 import keys
from ms07.diagnose import run_check_async
from tests.diagnose.conftest import acli, hold


def _beat(redis_url: str, worker_id: str, *, pid: int, host: str | None = None, age: float = 0.0) -> None:
    r = redis.Redis.from_url(redis_url)
    payload = {"worker_id": worker_id, "pid": pid, "host": host or socket.gethostname(),
               "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - age))}
    # As the engine does: the TTL is heartbeat_ttl_seconds (60) at each beat, so what is
    # left of it says how old the beat is.
    r.set(keys.heartbeat(worker_id), json.dumps(payload), ex=int(60 - age))
    r.close()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])  # noqa: S603
    proc.wait()
    return proc.pid


async def test_heartbeat_key_of_a_killed_local_process_does_not_count(make_settings, redis_url) -> None:
    """Right after kill -9 the key lives on for its TTL; the check must not call the worker live."""
    hold(redis_url, "w-killed", 5)
    _beat(redis_url, "w-killed", pid=_dead_pid())
    result = await run_check_async(make_settings(), "queue")
    assert result.details["live_workers"] == []
    assert "is gone from" in result.details["dead_heartbeats"]["w-killed"]
    # Nothing delivers: that is the headline, the dead consumer its detail.
    assert [f.id for f in result.findings[:2]] == ["queue.no_live_workers", "queue.dead_consumers"]
    assert result.exit_code == 2


async def test_heartbeat_key_three_beats_old_does_not_count(make_settings, redis_url) -> None:
    hold(redis_url, "w-hung", 1)
    _beat(redis_url, "w-hung", pid=1, host="elsewhere", age=30)  # interval 1 s in tests
    _beat(redis_url, "w-fine", pid=os.getpid())
    result = await run_check_async(make_settings(), "queue")
    assert result.details["live_workers"] == ["w-fine"]
    assert result.finding("dead_consumers").severity == "warning"  # w-fine will reclaim


async def test_crash_whose_entries_were_taken_over_is_info(make_settings, db, redis_url, cli, config_file) -> None:
    db.execute("INSERT INTO worker_heartbeats (worker_id, host, pid, started_at, updated_at, version) VALUES "
               "('w-crashed', 'pod-a', 7, now() - interval '1 hour', now() - interval '20 minutes', 'x'), "
               "('w-replaced', 'pod-b', 1, now() - interval '1 hour', now() - interval '20 minutes', 'x'), "
               "('w-new', 'pod-b', 1, now() - interval '19 minutes', now(), 'x'), "
               "('w-holding', 'pod-c', 9, now() - interval '1 hour', now() - interval '20 minutes', 'x')")
    r = redis.Redis.from_url(redis_url)
    r.set(keys.heartbeat("w-new"), "{}")
    r.close()
    hold(redis_url, "w-holding", 2)
    result = await run_check_async(make_settings(), "queue")
    crashed = result.finding("crashed_workers")
    assert crashed.severity == "info"
    assert "w-crashed (pod-a pid 7) crashed at" in crashed.evidence and "entries were taken over" in crashed.evidence
    assert "w-new runs on that host since" in crashed.evidence
    assert crashed.command == "ms07 workers forget w-crashed w-replaced"
    stale = result.finding("stale_workers")
    assert "w-holding" in stale.evidence and "holds 2 pending entries" in stale.evidence
    assert "w-crashed" not in stale.evidence and "w-replaced" not in stale.evidence

    # Once a live worker took its entries over, the crash alone no longer makes a
    # monitoring plugin WARN.
    r = redis.Redis.from_url(redis_url)
    stream = keys.stream("default")
    _, claimed, *_ = r.xautoclaim(stream, keys.GROUP, "w-new", 0, "0-0")
    r.xack(stream, keys.GROUP, *[entry_id for entry_id, _ in claimed])
    r.close()
    res = await acli(cli, ["diagnose", "queue"], config=config_file())
    assert res.exit_code == 0, res.stdout
    assert "crashed earlier" in res.stdout


async def test_workers_forget_is_audited_and_refuses_a_live_worker(db, redis_url, cli, config_file) -> None:
    db.execute("INSERT INTO worker_heartbeats (worker_id, host, pid, started_at, updated_at, version) VALUES "
               "('w-crashed', 'pod-a', 7, now() - interval '1 hour', now() - interval '20 minutes', 'x'), "
               "('w-alive', 'pod-b', 8, now() - interval '1 hour', now(), 'x')")
    res = await acli(cli, ["workers", "forget", "w-crashed", "w-alive"], config=config_file())
    assert res.exit_code == 2 and "w-alive beat" in res.stderr and "it is alive" in res.stderr
    # Nothing was forgotten: the refusal came before any change.
    assert len(db.execute("SELECT 1 FROM worker_heartbeats")) == 2

    res = await acli(cli, ["workers", "forget", "w-crashed"], config=config_file())
    assert res.exit_code == 0 and "forgot worker w-crashed" in res.stdout
    assert db.execute("SELECT worker_id FROM worker_heartbeats") == [("w-alive",)]
    [(plan, step, detail)] = db.execute("SELECT plan, step, detail FROM recovery_audit")
    assert plan == "workers forget" and step == "forget worker w-crashed" and detail["host"] == "pod-a"
    assert "crashed_workers" not in (await acli(cli, ["diagnose", "queue", "--json"], config=config_file())).stdout

    res = await acli(cli, ["workers", "forget", "nobody"], config=config_file())
    assert res.exit_code == 4 and "no worker nobody" in res.stderr
