"""The queues that bench/compare.py runs side by side, behind one small interface.

ms07 runs from this virtual environment; each peer (Celery, arq, taskiq) from its own,
created on first use under ``~/.cache/ms07-bench`` (``MS07_BENCH_CACHE``): their pins
clash with ms07's and with each other's (arq pins redis < 6, Celery needs redis >= 6.1,
kubernetes needs python-dateutil >= 3). Workers and producers are subprocesses; the
settings each one runs with are in ``SETTINGS`` (and in bench/peers/*.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import common

CACHE = Path(os.environ.get("MS07_BENCH_CACHE", Path.home() / ".cache" / "ms07-bench"))

PACKAGES: dict[str, list[str]] = {
    "celery": ["celery[redis]>=5.4", "requests>=2.31", "hiredis>=2.0"],
    "arq": ["arq>=0.26", "aiohttp>=3.9.5", "uvloop>=0.19", "hiredis>=2.0"],
    "taskiq": [
        "taskiq>=0.11",
        "taskiq-redis>=1.0",
        "aiohttp>=3.9.5",
        "uvloop>=0.19",
        "hiredis>=2.0",
    ],
}
VERSIONS_OF = {
    "celery": ["celery", "kombu", "redis", "requests"],
    "arq": ["arq", "redis", "aiohttp"],
    "taskiq": ["taskiq", "taskiq-redis", "redis", "aiohttp"],
}

WORKERS = {"ms07": 1, "ms07-w2": 2}  # ms07 as `ms07 run --workers N`

SETTINGS = {
    "ms07-w2": "as ms07, with `ms07 run --workers 2`: a supervisor and 2 engine processes, each "
    "with `service.concurrency` C (2C in flight in all); CPU is the whole tree's",
    "ms07": "`ms07 run`, 1 process, `service.concurrency` C, `prefetch` 16 (C x 16 entries held), "
    "`read_batch` 256, aiohttp pool of C connections, uvloop; every job and attempt in "
    "PostgreSQL; producer: `ms07.ops.submit` per distribution, group-committed (`SubmitBatcher`)",
    "celery": "`--pool threads --concurrency C --without-heartbeat --without-gossip --without-mingle`, "
    "`worker_prefetch_multiplier` 16, `task_acks_late` False (ack on receipt, the default), "
    "`task_ignore_result`, JSON, hiredis; a `requests.Session` per thread; producer: "
    "`apply_async` in one thread",
    "arq": "1 worker, `max_jobs` C, `keep_result` 0, `poll_delay` 0.05 s (default 0.5 s), "
    "`queue_read_limit` default (max(5C, 100)), uvloop, hiredis; one aiohttp session "
    "from `on_startup`; producer: `enqueue_job`, 64 in flight",
    "taskiq": "taskiq-redis `RedisStreamBroker` (consumer group, ack after the task), "
    "`--workers 1 --max-async-tasks C --max-prefetch C --no-parse`, uvloop (the CLI "
    "uses it when installed), hiredis; one aiohttp session from WORKER_STARTUP; "
    "producer: `kiq`, 64 in flight",
}


def peer_python(name: str) -> Path:
    """The peer's interpreter; the venv is created (or updated) when its package list changed."""
    venv = CACHE / f"venv-{name}"
    python = venv / "bin" / "python"
    marker = venv / ".bench-packages"
    wanted = "\n".join(PACKAGES[name])
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    print(f"[bench] installing {name} into {venv} ...", file=sys.stderr, flush=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)  # noqa: S603
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PACKAGES[name]], check=True)  # noqa: S603
    marker.write_text(wanted)
    return python


def versions(name: str) -> dict[str, str]:
    if name in WORKERS:
        from importlib.metadata import version

        return {p: version(p) for p in ("ms07", "aiohttp", "redis", "psycopg")}
    code = (
        "import json, importlib.metadata as m; "
        f"print(json.dumps({{p: m.version(p) for p in {VERSIONS_OF[name]!r}}}))"
    )
    out = subprocess.run(
        [str(peer_python(name)), "-c", code], check=True, capture_output=True, text=True
    )  # noqa: S603
    return json.loads(out.stdout)


@dataclass
class Produced:
    n: int
    seconds: float
    rate: float
    cpu: float


class System:
    """One queue: ``reset`` its state, ``produce`` N jobs (a subprocess), ``start`` and
    ``stop`` its worker (a subprocess tree)."""

    def __init__(
        self, name: str, srv: common.Servers, sink_port: int, concurrency: int, tmp: Path
    ) -> None:
        self.name, self.srv, self.sink_port, self.concurrency, self.tmp = (
            name,
            srv,
            sink_port,
            concurrency,
            tmp,
        )
        self.workers = WORKERS.get(name)  # None: a peer
        self.python = Path(sys.executable) if self.workers else peer_python(name)
        self.worker: subprocess.Popen[bytes] | None = None
        self.config = common.write_config(tmp / "ms07.yaml", sink_port, concurrency)
        self.env = {
            **os.environ,
            "PYTHONPATH": str(common.ROOT),
            "BENCH_REDIS_URL": srv.redis_url,
            "BENCH_SINK_URL": f"http://127.0.0.1:{sink_port}/in",
            "BENCH_CONCURRENCY": str(concurrency),
            "MS07_DATABASE_URL": srv.database_url,
            "MS07_REDIS_URL": srv.redis_url,
            "MS07_LOG_LEVEL": "WARNING",
        }

    def reset(self) -> None:
        """Empty Redis (and ms07's tables): every run starts from the same state."""
        common.reset_state(self.srv)

    def produce(
        self, n: int, rate: float = 0.0, prefix: str = "k", concurrency: int = 64
    ) -> Produced:
        module = {
            "ms07": "bench.peers.ms07_producer",
            "ms07-w2": "bench.peers.ms07_producer",
            "celery": "bench.peers.celery_app",
            "arq": "bench.peers.arq_app",
            "taskiq": "bench.peers.taskiq_app",
        }[self.name]
        cmd = [
            str(self.python),
            "-m",
            module,
            "--n",
            str(n),
            "--rate",
            str(rate),
            "--prefix",
            prefix,
            "--concurrency",
            str(concurrency),
        ]
        if self.workers:
            cmd += ["--config", str(self.config)]
        out = subprocess.run(
            cmd,
            env=self.env,
            cwd=common.ROOT,
            check=True,
            capture_output=True,  # noqa: S603
            text=True,
            timeout=max(600.0, n / 20),
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        return Produced(r["n"], r["seconds"], r["rate"], r["cpu"])

    def start(self, log: Path) -> subprocess.Popen[bytes]:
        """Start the worker without waiting for it: callers watch the sink."""
        c = str(self.concurrency)
        if self.workers:
            self.worker = common.start_engine(
                self.config, self.srv, common.free_port(), log=log, wait=False,
                args=["--workers", str(self.workers)] if self.workers > 1 else None,
            )
            return self.worker
        cmd = {
            "celery": [
                "-m",
                "celery",
                "-A",
                "bench.peers.celery_app",
                "worker",
                "--pool",
                "threads",
                "--concurrency",
                c,
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
                "-Q",
                "bench",
                "--loglevel",
                "WARNING",
            ],
            "arq": ["-m", "bench.peers.arq_app", "worker"],
            "taskiq": [
                "-m",
                "taskiq",
                "worker",
                "bench.peers.taskiq_app:broker",
                "--workers",
                "1",
                "--max-async-tasks",
                c,
                "--max-prefetch",
                c,
                "--no-parse",
                "--log-level",
                "WARNING",
            ],
        }[self.name]
        with open(log, "ab") as out:
            self.worker = subprocess.Popen(
                [str(self.python), *cmd],
                env=self.env,
                cwd=common.ROOT,  # noqa: S603
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self.worker

    def stop(self) -> int | None:
        """SIGTERM (each one drains on it), then SIGKILL of its own process group if it hangs."""
        proc, self.worker = self.worker, None
        if proc is None:
            return None
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(60)
        except subprocess.TimeoutExpired:
            if not self.workers:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
            return proc.wait(10)

    def recorded(self) -> dict[str, Any]:
        """ms07 only: what PostgreSQL holds (every delivery must be recorded)."""
        if not self.workers:
            return {}
        import psycopg

        with psycopg.connect(self.srv.database_url) as conn:
            delivered = conn.execute(
                "SELECT count(*) FROM distribution_jobs WHERE status = 'delivered'"
            ).fetchone()
            attempts = conn.execute("SELECT count(*) FROM distribution_attempts").fetchone()
        return {
            "delivered_rows": delivered[0] if delivered else 0,
            "attempt_rows": attempts[0] if attempts else 0,
        }
