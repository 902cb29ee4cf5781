"""A real 3-master Redis Cluster on loopback, for the tests that must work on Cluster.

Started with the same redis-server the embedded default uses (``redis-server
--cluster-enabled yes`` x 3, then ``redis-cli --cluster create``); the caller skips with a
reason when no redis-server/redis-cli is on the machine.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from ms07.embedded import redis_server_binary


def _free_ports(n: int) -> list[int]:
    # Cluster bus ports are port + 10000: keep both free.
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 < 65536 and port not in ports:
            with socket.socket() as s2:
                try:
                    s2.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            ports.append(port)
    return ports


def redis_cli_binary() -> str | None:
    server = Path(redis_server_binary())
    sibling = server.with_name("redis-cli")
    return str(sibling) if sibling.exists() else shutil.which("redis-cli")


class RedisCluster:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ms07-cluster-"))
        self.ports = _free_ports(3)
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> RedisCluster:
        server = redis_server_binary()
        cli = redis_cli_binary()
        if cli is None:
            raise RuntimeError("redis-cli not found")
        for port in self.ports:
            node = self.dir / str(port)
            node.mkdir()
            self.procs.append(subprocess.Popen(  # noqa: S603
                [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", str(node / "nodes.conf"), "--cluster-node-timeout", "5000",
                 "--dir", str(node), "--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in self.ports:
            self._wait(port)
        subprocess.run(  # noqa: S603
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-replicas", "0",
             "--cluster-yes"], check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            out = subprocess.run([cli, "-p", str(self.ports[0]), "cluster", "info"],  # noqa: S603
                                 capture_output=True, text=True, timeout=10).stdout
            if "cluster_state:ok" in out:
                return self
            time.sleep(0.1)
        raise RuntimeError("cluster did not reach cluster_state:ok")

    @staticmethod
    def _wait(port: int) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on {port} did not start")

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
