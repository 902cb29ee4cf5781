"""Shared pieces of the benchmarks: servers, the sink process, client ceilings, CPU/RSS."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
# The engines started here guard their API with this token (an engine without one refuses
# to start); a token, not service.allow_unauthenticated, so that bench/ab.py can start a
# tree from before that setting existed.
API_TOKEN = os.environ.get("MS07_API_TOKEN") or f"bench-{uuid.uuid4().hex}"
PAYLOAD = json.dumps({"report": "x" * 990}).encode()  # ~1 KiB JSON


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 20.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()  # noqa: S310 - loopback only
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


@contextmanager
def sink_process(*args: str) -> Any:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.sink", str(port), *args], cwd=ROOT)  # noqa: S603
    try:
        wait_http(f"http://127.0.0.1:{port}/stats")
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(10)


def sink_stats(port: int) -> dict[str, int]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as r:  # noqa: S310
        return json.loads(r.read())


def sink_latency(port: int, skip: float = 0.0) -> dict[str, float | None]:
    """Enqueue -> delivered latency percentiles (seconds) the sink recorded since the reset,
    leaving out what arrived in the first ``skip`` seconds."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/latency?skip={skip:g}", timeout=30) as r:  # noqa: S310
        return json.loads(r.read())


@dataclass
class Delivered:
    """N deliveries as the receiver saw them: rate from the sink's first request to its
    N-th unique key; CPU of the watched process tree over the same span (startup excluded)."""

    rate: float
    seconds: float
    cpu_seconds: float
    unique: int
    duplicates: int


def wait_delivered(sink_port: int, n: int, watch: ProcessWatch | None, timeout: float,
                   poll: float = 0.02, progress: list[tuple[float, int]] | None = None) -> Delivered:
    """Poll the sink until it has ``n`` unique keys. CPU is read when the first request is
    seen and when the last one is: the workers' startup (imports, connections) is not
    counted, for any system. ``progress`` collects (monotonic time, unique) per poll."""
    deadline = time.monotonic() + timeout
    cpu0: float | None = None
    while True:
        stats = sink_stats(sink_port)
        if progress is not None:
            progress.append((time.monotonic(), stats["unique"]))
        if cpu0 is None and stats["requests"] and watch is not None:
            cpu0 = watch.cpu_seconds()
        if stats["unique"] >= n:
            cpu1 = watch.cpu_seconds() if watch is not None else 0.0
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {stats['unique']:,} of {n:,} delivered in {timeout:.0f}s")
        time.sleep(poll)
    span = max(stats["last"] - stats["first"], 1e-9)
    return Delivered(rate=(n - 1) / span if n > 1 else float("nan"), seconds=span,
                     cpu_seconds=cpu1 - (cpu0 if cpu0 is not None else cpu1),
                     unique=stats["unique"], duplicates=stats["duplicates"])


def sink_reset(port: int) -> None:
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/reset", method="POST"), timeout=5)  # noqa: S310


@dataclass
class Servers:
    database_url: str
    redis_url: str
    state_dir: Path
    owned: bool


def start_redis_tcp(state: Path) -> str:
    """The embedded Redis binary and settings (AOF everysec, noeviction) on a loopback TCP
    port instead of a Unix socket: the peers' clients connect to it as they would in
    production, and ``embedded.stop_servers(state)`` stops it (same pidfile)."""
    from ms07 import embedded

    rdir = state / "redis"
    rdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (rdir / "redis.conf").write_text("\n".join([
        f"dir {rdir}", f"pidfile {rdir / 'redis.pid'}", f"logfile {rdir / 'redis.log'}",
        "daemonize yes", "appendonly yes", "appendfsync everysec", 'save ""',
        "maxmemory-policy noeviction", "bind 127.0.0.1", f"port {port}"]) + "\n")
    subprocess.run([embedded.redis_server_binary(), str(rdir / "redis.conf")], check=True,  # noqa: S603
                   capture_output=True, timeout=30)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 15
    while not embedded._redis_answers(("127.0.0.1", port)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"Redis did not start; see {rdir / 'redis.log'}")
        time.sleep(0.05)
    return url


@contextmanager
def servers(redis_tcp: bool = False) -> Any:
    """Embedded PostgreSQL + Redis in a temporary state dir, unless MS07_*_URL are set.
    ``redis_tcp``: Redis on a loopback TCP port (bench/compare.py shares it with the peers)."""
    from ms07 import embedded

    db = os.environ.get("MS07_DATABASE_URL")
    rd = os.environ.get("MS07_REDIS_URL")
    state = Path(tempfile.mkdtemp(prefix="ms07-bench-"))
    owned = not (db and rd)
    db = db or embedded.start_postgres(state)
    rd = rd or (start_redis_tcp(state) if redis_tcp else embedded.start_redis(state))
    try:
        yield Servers(db, rd, state, owned)
    finally:
        if owned:
            embedded.stop_servers(state)


def reset_state(srv: Servers) -> None:
    """Empty tables and Redis between runs."""
    import psycopg
    import redis

    from ms07.store import db as store_db

    async def migrate() -> None:
        conn = await store_db.connect(srv.database_url)
        try:
            await store_db.migrate(conn)
        finally:
            await conn.close()

    asyncio.run(migrate())
    with psycopg.connect(srv.database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE distribution_jobs, distribution_attempts, worker_heartbeats, "
                     "worker_heartbeat_samples, destinations")
        conn.execute("VACUUM ANALYZE distribution_jobs")
    r = redis.Redis.from_url(srv.redis_url)
    r.flushall()
    r.close()


def postmaster_pid(srv: Servers) -> int | None:
    """The embedded PostgreSQL's postmaster (its backends are its children), if it is ours."""
    pidfile = srv.state_dir / "postgres" / "postmaster.pid"
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def reset_state_rows(srv: Servers) -> None:
    """Empty the job and attempt tables under a running engine (Redis and its group stay)."""
    import psycopg

    with psycopg.connect(srv.database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE distribution_jobs, distribution_attempts")


def write_config(path: Path, sink_port: int, concurrency: int, extra: str = "", prefetch: float = 16.0) -> Path:
    path.write_text(f"""
service: {{concurrency: {concurrency}, prefetch: {prefetch:g}, heartbeat_interval_seconds: 5}}
distribution: {{timeout_seconds: 10, claim_idle_seconds: 30, read_batch: 256}}
memory: {{threshold_mb: 4096}}
destinations:
  - name: sink
    url: http://127.0.0.1:{sink_port}/in
    pool: {{max_connections: {max(concurrency, 1)}, max_keepalive_connections: {max(concurrency, 1)}}}
{extra}""")
    return path


async def fill(settings: Any, n: int, chunk: int = 1000) -> float:
    """Insert ``n`` jobs and enqueue them in bulk; returns seconds taken."""
    from ms07.ops.submit import build_jobs, record_and_enqueue
    from ms07.runtime import Runtime

    t0 = time.perf_counter()
    async with Runtime(settings, migrate=False) as rt:
        q = await rt.queue()
        async with rt.connection() as conn:
            for start in range(0, n, chunk):
                batch = []
                for _ in range(min(chunk, n - start)):
                    batch += build_jobs(settings, ["sink"], PAYLOAD)[0]
                await record_and_enqueue(conn, q, batch)
    return time.perf_counter() - t0


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


async def ceiling_aiohttp(url: str, n: int, concurrency: int) -> float:
    """Bare aiohttp: ``concurrency`` tasks posting ``n`` payloads. Returns requests/s."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        remaining = iter(range(n))

        async def worker() -> None:
            for _ in remaining:
                async with session.post(url, data=PAYLOAD, headers={
                        "Content-Type": "application/json", "Idempotency-Key": str(uuid.uuid4())}) as r:
                    await r.read()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return n / (time.perf_counter() - t0)


async def ceiling_httpx(url: str, n: int, concurrency: int, transport: str = "default") -> float:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    if transport == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        client = httpx.AsyncClient(transport=AiohttpTransport(), limits=limits)
    else:
        client = httpx.AsyncClient(limits=limits)
    async with client:
        remaining = iter(range(n))

        async def worker() -> None:
            for _ in remaining:
                r = await client.post(url, content=PAYLOAD, headers={
                    "Content-Type": "application/json", "Idempotency-Key": str(uuid.uuid4())})
                r.read()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return n / (time.perf_counter() - t0)


class ProcessWatch:
    """CPU seconds (user+sys) and peak RSS of a process tree (the process and all its
    descendants: taskiq's and Celery's supervisors fork workers), sampled in a thread.
    ``samples`` holds (seconds since start, RSS of the tree in bytes)."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak_rss = 0
        self.samples: list[tuple[float, int]] = []
        self._cpu: dict[int, float] = {}  # last CPU seen per pid: a child that exited still counts
        self._stop = False
        import threading

        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()
        self._thread.start()

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self.proc, *self.proc.children(recursive=True)]
        except psutil.Error:
            return []

    def _run(self) -> None:
        while not self._stop:
            tree = self._tree()
            if not tree:
                return
            rss = 0
            for p in tree:
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak_rss = max(self.peak_rss, rss)
            self.samples.append((time.monotonic() - self._t0, rss))
            time.sleep(self.interval)

    def cpu_seconds(self) -> float:
        with self._lock:
            for p in self._tree():
                try:
                    t = p.cpu_times()
                except psutil.Error:
                    continue
                self._cpu[p.pid] = t.user + t.system
            return sum(self._cpu.values())

    def stop(self) -> None:
        self._stop = True
        self._thread.join(2)


def engine_env(srv: Servers | None, config: Path | None, extra_env: dict[str, str] | None = None,
               tree: Path | None = None) -> tuple[Path, dict[str, str]]:
    """Working directory and environment for ``python -m ms07`` of ``tree`` (default: this
    checkout). ``python -m`` puts its working directory first on sys.path, ahead of
    PYTHONPATH, so another tree's engine must also start in that tree: from this checkout
    it would import this checkout's ms07 whatever PYTHONPATH says."""
    env = {**os.environ, "MS07_LOG_LEVEL": "WARNING", "MS07_API_TOKEN": API_TOKEN, **(extra_env or {})}
    if config is not None:
        env["MS07_CONFIG"] = str(config)
    if srv is not None:
        env["MS07_DATABASE_URL"], env["MS07_REDIS_URL"] = srv.database_url, srv.redis_url
    cwd = ROOT
    if tree is not None:
        cwd = tree.resolve()
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(cwd), env.get("PYTHONPATH", "")) if p)
    return cwd, env


def ms07_origin(tree: Path | None = None) -> Path:
    """The ms07 package an engine started by ``start_engine(..., tree=tree)`` imports."""
    cwd, env = engine_env(None, None, tree=tree)
    out = subprocess.run([sys.executable, "-c", "import ms07; print(ms07.__file__)"],  # noqa: S603
                         cwd=cwd, env=env, check=True, capture_output=True, text=True, timeout=60)
    return Path(out.stdout.strip()).parent


def start_engine(config: Path, srv: Servers, http_port: int, extra_env: dict[str, str] | None = None,
                 log: Path | None = None, wait: bool = True, tree: Path | None = None,
                 args: list[str] | None = None) -> subprocess.Popen[bytes]:
    """``ms07 run`` as a subprocess, of ``tree``'s source (default: this checkout); ``wait``
    until /health/live answers (it answers once the engine is already delivering: callers
    that count CPU from the first delivery pass ``wait=False`` and watch the sink instead)."""
    cwd, env = engine_env(srv, config, extra_env, tree)
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "ms07", "run", "--http-port", str(http_port), *(args or [])],  # noqa: S603
                            env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    if wait:
        wait_http(f"http://127.0.0.1:{http_port}/health/live", timeout=60)
    return proc


def window_rate(progress: list[tuple[float, int]], n: int, lo: float = 0.1, hi: float = 0.9) -> float:
    """Deliveries/s between the polls that saw ``lo`` and ``hi`` of ``n`` delivered: blind
    to staggered start-ups and to the last stragglers."""
    t_lo = next(t for t, u in progress if u >= lo * n)
    t_hi, u_hi = next((t, u) for t, u in progress if u >= hi * n)
    u_lo = next(u for t, u in progress if u >= lo * n)
    return (u_hi - u_lo) / max(t_hi - t_lo, 1e-9)


def machine(load_before: tuple[float, float, float]) -> dict[str, Any]:
    """Where and when a benchmark ran, for its report: CPUs, Python, platform, date, the
    load average before and now (this machine is shared)."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }
