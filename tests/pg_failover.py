"""A PostgreSQL primary and a streaming standby on loopback, for the failover test.

Built from the binaries the embedded PostgreSQL wheel ships (initdb, pg_ctl,
pg_basebackup). As root, PostgreSQL runs as the ``pgserver`` user the embedded server
created, as it must.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def _bin(name: str) -> str:
    import pgserver

    return str(Path(pgserver.__file__).parent / "pginstall" / "bin" / name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Pair:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ms07-failover-"))
        self.primary = self.dir / "primary"
        self.standby = self.dir / "standby"
        self.ports = (_free_port(), _free_port())
        self.user = "pgserver" if os.geteuid() == 0 else None

    def _run(self, *args: str, timeout: float = 60) -> str:
        cmd = list(args)
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout).stdout  # noqa: S603

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        return f"postgresql://postgres@{hosts}/postgres?target_session_attrs=read-write&connect_timeout=2"

    def start(self) -> Pair:
        if self.user:
            os.chmod(self.dir, 0o777)
        self._run(_bin("initdb"), "-D", str(self.primary), "--auth=trust", "-U", "postgres", "--encoding=utf8")
        with (self.primary / "postgresql.conf").open("a") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {self.ports[0]}\nwal_level = replica\n"
                       "max_wal_senders = 4\nfsync = off\nunix_socket_directories = ''\n")
        with (self.primary / "pg_hba.conf").open("a") as hba:
            hba.write("host replication postgres 127.0.0.1/32 trust\n")
        self._run(_bin("pg_ctl"), "-D", str(self.primary), "-l", str(self.dir / "primary.log"), "-w", "start")
        self._run(_bin("pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.ports[0]), "-U", "postgres",
                  "-D", str(self.standby), "-R", "-X", "stream")
        with (self.standby / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {self.ports[1]}\n")
        self._run(_bin("pg_ctl"), "-D", str(self.standby), "-l", str(self.dir / "standby.log"), "-w", "start")
        return self

    def stop_primary(self) -> None:
        self._run(_bin("pg_ctl"), "-D", str(self.primary), "-m", "fast", "-w", "stop")

    def promote_standby(self) -> None:
        self._run(_bin("pg_ctl"), "-D", str(self.standby), "-w", "promote")

    def wait_replicated(self, timeout: float = 20.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.ports[0]}/postgres") as conn:
                row = conn.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'").fetchone()
                if row and row[0] >= 1:
                    return
            time.sleep(0.1)
        raise RuntimeError("the standby never streamed")

    def stop(self) -> None:
        for d in (self.primary, self.standby):
            if (d / "postmaster.pid").exists():
                try:
                    self._run(_bin("pg_ctl"), "-D", str(d), "-m", "immediate", "-w", "stop", timeout=30)
                except subprocess.SubprocessError:
                    pass
        shutil.rmtree(self.dir, ignore_errors=True)
