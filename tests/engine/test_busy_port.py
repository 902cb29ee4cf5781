"""A second ``ms07 run`` on a port already taken: one line, exit 2, nothing left behind."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import redis

from ms07 import keys
from tests.support import destination, write_config


def _run(config: Path, env: dict[str, str], port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "ms07", "run", "--config", str(config), "--http-port", str(port)],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=90,
    )


async def test_run_on_a_busy_port_is_one_line_and_leaves_no_worker(tmp_path: Path, env_for: dict[str, str],
                                                                   database_url: str, redis_url: str) -> None:
    config = write_config(tmp_path / "engine.yaml", {
        "service": {"http_host": "127.0.0.1", "allow_unauthenticated": True, "heartbeat_interval_seconds": 1},
        "destinations": [destination("a", "http://127.0.0.1:9/in")],
    })
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = await asyncio.to_thread(_run, config, env_for, port)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: address already in use (a second `ms07 run`?); choose another "
        "port with --http-port, MS07_HTTP_PORT or service.http_port (0: any free port)"]
    assert "Traceback" not in done.stdout and "Logging error" not in done.stdout
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM worker_heartbeats").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM worker_heartbeat_samples").fetchone() == (0,)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert list(client.scan_iter(keys.HEARTBEAT_PATTERN)) == []
        stream = keys.stream("default")
        groups = client.xinfo_groups(stream) if client.exists(stream) else []
        assert all(g["consumers"] == 0 for g in groups)
    finally:
        client.close()
