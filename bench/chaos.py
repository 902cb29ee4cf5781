"""Random chaos against several engine processes, judged by the ledger of tests/faults.

    python -m bench.chaos [--minutes 10] [--engines 3] [--rate 40] [--seed N] [--json FILE]

Dedicated servers under a temporary directory: an embedded PostgreSQL and a redis-server
with AOF ``everysec`` (never another session's servers). 2-3 ``ms07 run`` processes share
the queue; a client submits through their API (idempotency keys, retried on another engine
until accepted) to a plain and a batching destination of one sink that fails 30% of
requests with 500 and hangs 5% past the delivery timeout (with ``max_attempts: 20`` a job
exhausts its retries once in about 10^9: that sink parks nothing). Meanwhile:

- every few seconds one engine is SIGKILLed and restarted: chosen at random among those
  holding entries (any, if none does), so the kills take work down with them;
- at a quarter of the run PostgreSQL restarts (``pg_ctl restart -m immediate``: a crash);
- at half, Redis is SIGKILLed and restarted (AOF everysec: up to a second of writes lost);
- at three quarters, Redis gets a FLUSHALL, which the reconciler must repair from Postgres.

Then submitting stops, the run settles, and the ledger is printed with the recovery time of
every fault: *flowing* is the time from the fault to the first delivery of a distribution
accepted after it; *settled* the time until everything the fault touched (the entries a
killed worker held; every job open at a Redis fault) was delivered or parked.
The ledger (tests/faults/ledger.py) is told the Redis faults (a parked job's DLQ entry may
be gone only if one of them explains it) and bounds the DLQ by the faults: poison entries
at most as many as the kills caught held, nothing else. Exit code 0 when the ledger adds
up, nothing was lost, and at least one kill caught an engine holding entries.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import ROOT, free_port, sink_process
from tests.faults.ledger import Ledger, RedisFault, collect, open_count, table

STREAM = "distribution:queue:{default}"


@dataclass
class Options:
    minutes: float = 10.0
    engines: int = 3
    rate: float = 40.0
    seed: int | None = None
    kill_every: tuple[float, float] = (3.0, 8.0)
    settle_seconds: float = 120.0
    json: str | None = None
    keep: bool = False


@dataclass
class Fault:
    kind: str
    at: float
    detail: str = ""
    touched: list[str] = field(default_factory=list)  # ids the fault left to recover
    flowing_s: float | None = None
    settled_s: float | None = None
    ended: float = 0.0


def engine_config(path: Path, sink_port: int) -> Path:
    sink = f"http://127.0.0.1:{sink_port}/in"
    path.write_text(f"""
service: {{concurrency: 32, prefetch: 2, drain_grace_seconds: 3, heartbeat_interval_seconds: 1}}
distribution:
  timeout_seconds: 1
  connect_timeout_seconds: 1
  claim_idle_seconds: 3
  retry_base_delay_seconds: 0.2
  max_retry_delay: 2
  max_attempts: 20
  max_deliveries: 3
  scheduler_interval_seconds: 0.1
  reconcile_interval_seconds: 1
  reconcile_after_seconds: 4
circuit_breaker: {{failure_threshold: 50, recovery_timeout: 1}}
destinations:
  - {{name: plain, url: "{sink}"}}
  - {{name: batched, url: "{sink}", batch: {{max_items: 10, max_wait_ms: 50}}}}
""")
    return path


class Chaos:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.state = Path(tempfile.mkdtemp(prefix="ms07-chaos-"))
        self.token = secrets.token_hex(16)
        self.accepted: dict[str, float] = {}  # distribution id -> when the client got it
        self.gave_up = 0
        self.tried = 0
        self.faults: list[Fault] = []
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.ports: dict[int, int] = {}
        self.incarnation: Counter[int] = Counter()
        self.exits: list[tuple[str, int]] = []  # (worker id, exit code) of exits we did not cause
        self.config = Path()
        self.database_url = self.redis_url = ""
        self.t0 = 0.0

    # ------------------------------------------------------------------ servers

    def start_servers(self) -> None:
        from ms07 import embedded

        self.database_url = embedded.start_postgres(self.state)
        self.redis_url = embedded.start_redis(self.state)

    def stop_servers(self) -> None:
        from ms07 import embedded

        embedded.stop_servers(self.state)
        if not self.opts.keep:
            shutil.rmtree(self.state, ignore_errors=True)

    def restart_postgres(self) -> None:
        from pgserver._commands import pg_ctl

        user = "pgserver" if os.geteuid() == 0 else None
        pg_ctl(["-w", "-m", "immediate", "restart"], pgdata=self.state / "postgres", user=user)

    def restart_redis(self) -> None:
        from ms07 import embedded

        pid = embedded.redis_pid(self.state)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.02)
        embedded.start_redis(self.state)

    # ------------------------------------------------------------------ engines

    def worker_id(self, slot: int) -> str:
        return f"chaos-{slot}-{self.incarnation[slot]}"

    def spawn(self, slot: int, config: Path) -> None:
        self.incarnation[slot] += 1
        env = {**os.environ, "MS07_CONFIG": str(config), "MS07_DATABASE_URL": self.database_url,
               "MS07_REDIS_URL": self.redis_url, "MS07_STATE_DIR": str(self.state), "MS07_API_TOKEN": self.token,
               "MS07_SERVICE__WORKER_ID": self.worker_id(slot)}
        log = (self.state / f"engine-{slot}-{self.incarnation[slot]}.log").open("ab")
        self.procs[slot] = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "ms07", "run", "--http-port", str(self.ports[slot])],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()

    def supervise(self) -> None:
        """Restart an engine that exited on its own (as an orchestrator would): one started
        while Redis or PostgreSQL was down exits with an error."""
        for slot, proc in self.procs.items():
            if proc.poll() is not None:
                self.exits.append((self.worker_id(slot), proc.returncode))
                self.spawn(slot, self.config)

    async def held_by(self, redis: Any, consumer: str) -> list[str]:
        """The distribution ids a consumer holds (its pending entries)."""
        try:
            pending = await redis.xpending_range(STREAM, "workers", min="-", max="+", count=10_000,
                                                 consumername=consumer)
            ids = []
            for p in pending:
                for _, fields in await redis.xrange(STREAM, min=p["message_id"], max=p["message_id"]):
                    ids.append(fields.get("id", ""))
            return ids
        except Exception:  # Redis down right now: the kill still happens, unmeasured
            return []

    # ------------------------------------------------------------------ client

    async def submit_one(self, http: Any, n: int) -> None:
        body = {"destinations": [self.rng.choice(["plain", "batched"])], "payload": {"n": n, "pad": "x" * 200},
                "idempotency_key": f"chaos-{n}"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            slot = self.rng.choice(list(self.ports))
            url = f"http://127.0.0.1:{self.ports[slot]}/api/v1/distributions"
            try:
                async with http.post(url, json=body, headers={"Authorization": f"Bearer {self.token}"}) as r:
                    if r.status in (200, 202):
                        did = (await r.json())["distributions"][0]["distribution_id"]
                        self.accepted.setdefault(did, time.time())
                        return
            except Exception:  # the engine died under us, or is restarting: try another
                pass
            await asyncio.sleep(0.2)
        self.gave_up += 1

    async def submit_loop(self, until: float) -> None:
        import aiohttp

        tasks: set[asyncio.Task[None]] = set()
        n = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            while time.monotonic() < until:
                n += 1
                self.tried = n
                task = asyncio.create_task(self.submit_one(http, n))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                await asyncio.sleep(1 / self.opts.rate)
            await asyncio.gather(*tasks)

    # ------------------------------------------------------------------ chaos

    async def open_ids(self) -> list[str]:
        import psycopg

        for _ in range(50):
            try:
                async with await psycopg.AsyncConnection.connect(self.database_url) as conn:
                    cur = await conn.execute("SELECT distribution_id::text FROM distribution_jobs "
                                             "WHERE status IN ('queued', 'processing', 'retrying')")
                    return [r[0] for r in await cur.fetchall()]
            except psycopg.OperationalError:
                await asyncio.sleep(0.2)
        return []

    async def chaos_loop(self, until: float, config: Path, redis: Any) -> None:
        duration = until - time.monotonic()
        start = time.monotonic()
        scheduled = [(start + duration * 0.25, "postgres restart"), (start + duration * 0.5, "redis restart"),
                     (start + duration * 0.75, "redis flushall")]
        next_kill = time.monotonic() + self.rng.uniform(*self.opts.kill_every)
        while time.monotonic() < until:
            self.supervise()
            now = time.monotonic()
            if scheduled and now >= scheduled[0][0]:
                _, kind = scheduled.pop(0)
                await self.inject(kind, redis)
            elif now >= next_kill:
                holding = {slot: await self.held_by(redis, self.worker_id(slot)) for slot in self.procs}
                slot = self.rng.choice([s for s, held in holding.items() if held] or list(self.procs))
                consumer = self.worker_id(slot)
                held = holding[slot]
                self.procs[slot].kill()
                await asyncio.to_thread(self.procs[slot].wait)
                self.faults.append(Fault("SIGKILL engine", time.time(), f"{consumer}, holding {len(held)}", held))
                await asyncio.sleep(self.rng.uniform(0.5, 2.0))
                self.spawn(slot, config)
                next_kill = time.monotonic() + self.rng.uniform(*self.opts.kill_every)
            await asyncio.sleep(0.05)

    async def inject(self, kind: str, redis: Any) -> None:
        fault = Fault(kind, time.time())
        if kind != "postgres restart":
            fault.touched = await self.open_ids()
            fault.detail = f"{len(fault.touched)} jobs open"
        self.faults.append(fault)
        if kind == "postgres restart":
            await asyncio.to_thread(self.restart_postgres)
        elif kind == "redis restart":
            await asyncio.to_thread(self.restart_redis)
        else:
            await redis.flushall()
        fault.ended = time.time()
        fault.detail = (fault.detail + f"; took {time.time() - fault.at:.1f}s").lstrip("; ")

    # ------------------------------------------------------------------ the run

    async def run(self) -> dict[str, Any]:
        import psycopg
        import redis.asyncio as aioredis

        from ms07.store import db

        await asyncio.to_thread(self.start_servers)
        conn = await db.connect(self.database_url)
        await db.migrate(conn)
        await conn.close()
        fail_args = ("--fail-rate", "0.3", "--hang-rate", "0.05", "--hang-seconds", "2")
        with sink_process(*fail_args) as (sink_port, _):
            config = self.config = engine_config(self.state / "chaos.yaml", sink_port)
            for slot in range(self.opts.engines):
                self.ports[slot] = free_port()
                self.spawn(slot, config)
            redis = aioredis.Redis.from_url(self.redis_url, decode_responses=True, socket_timeout=5)
            try:
                await self.wait_live()
                self.t0 = time.time()
                until = time.monotonic() + self.opts.minutes * 60
                await asyncio.gather(self.submit_loop(until), self.chaos_loop(until, config, redis))
                settled = await self.settle()
                for proc in self.procs.values():
                    proc.send_signal(signal.SIGTERM)
                for proc in self.procs.values():
                    await asyncio.to_thread(proc.wait, 30)
                deliveries, first = _sink_json(sink_port, "/keys"), _sink_json(sink_port, "/first")
                async with await psycopg.AsyncConnection.connect(self.database_url) as conn:
                    ledger = await collect(conn, redis, f"chaos {self.opts.minutes:g} min", self.accepted,
                                           Counter(deliveries), redis_faults=self.redis_faults(),
                                           allowed_dlq={"poison": self.kills_held()})
                    cur = await conn.execute("SELECT distribution_id::text, extract(epoch FROM completed_at) "
                                             "FROM distribution_jobs")
                    completed = {r[0]: float(r[1]) for r in await cur.fetchall() if r[1] is not None}
            finally:
                await redis.aclose()
                for proc in self.procs.values():
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
        self.measure(first, completed)
        return self.report(ledger, settled)

    def redis_faults(self) -> list[RedisFault]:
        return [RedisFault(f.kind, f.at, f.ended) for f in self.faults if f.kind in ("redis restart", "redis flushall")]

    def kills(self) -> list[Fault]:
        return [f for f in self.faults if f.kind == "SIGKILL engine"]

    def kills_held(self) -> int:
        """Entries the killed engines held: a poison entry is one of them (held by
        ``max_deliveries`` + 1 of them, in fact)."""
        return sum(len(f.touched) for f in self.kills())

    async def wait_live(self) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as http:
            for port in self.ports.values():
                for _ in range(300):
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(f"http://127.0.0.1:{port}/health/live") as r:
                            if r.status == 200:
                                break
                    await asyncio.sleep(0.1)

    async def settle(self) -> bool:
        import psycopg

        deadline = time.monotonic() + self.opts.settle_seconds
        while time.monotonic() < deadline:
            self.supervise()
            with contextlib.suppress(psycopg.OperationalError):
                async with await psycopg.AsyncConnection.connect(self.database_url) as conn:
                    # Every job: the indeterminate submits (accepted, the answer lost) too.
                    if await open_count(conn) == 0:
                        return True
            await asyncio.sleep(0.5)
        return False

    def measure(self, first: dict[str, float], completed: dict[str, float]) -> None:
        for fault in self.faults:
            after = [first[i] for i, at in self.accepted.items() if at >= fault.at and i in first]
            fault.flowing_s = round(min(after) - fault.at, 2) if after else None
            done = [completed.get(i) for i in fault.touched if i]
            if fault.touched and all(d is not None for d in done):
                fault.settled_s = round(max(0.0, max(d for d in done if d is not None) - fault.at), 2)

    def report(self, ledger: Ledger, settled: bool) -> dict[str, Any]:
        if not settled:
            ledger.notes.append(f"NOT SETTLED within {self.opts.settle_seconds:g}s")
        if self.gave_up:
            ledger.notes.append(f"submits never accepted (client gave up): {self.gave_up}")
        if self.exits:
            ledger.notes.append(f"engines that exited on their own and were restarted: {self.exits}")
        hit = sum(1 for f in self.kills() if f.touched)
        ledger.notes.append(f"submits tried: {self.tried}; kills that caught entries held: {hit} of "
                            f"{len(self.kills())} ({self.kills_held()} entries)")
        if not hit:
            ledger.notes.append("NO KILL caught an engine holding entries: the kills proved nothing")
        return {"ledger": ledger, "faults": self.faults, "settled": settled, "tried": self.tried,
                "kills_that_hit": hit, "passed": ledger.passed and settled and hit > 0}


def faults_table(faults: list[Fault], t0: float) -> str:
    out = ["| # | fault | at (s) | detail | flowing again (s) | settled (s) |", "|---|---|---|---|---|---|"]
    for n, f in enumerate(faults, 1):
        out.append(f"| {n} | {f.kind} | {f.at - t0:.1f} | {f.detail} | {_s(f.flowing_s)} | {_s(f.settled_s)} |")
    return "\n".join(out)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _sink_json(port: int, path: str) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:  # noqa: S310 - loopback
        return json.loads(r.read())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--engines", type=int, default=3, choices=[2, 3])
    p.add_argument("--rate", type=float, default=40.0, help="submits per second")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--settle-seconds", type=float, default=120.0)
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--keep", action="store_true", help="keep the state directory (logs, data)")
    a = p.parse_args(argv)
    opts = Options(a.minutes, a.engines, a.rate, a.seed, settle_seconds=a.settle_seconds, json=a.json, keep=a.keep)
    chaos = Chaos(opts)
    try:
        result = asyncio.run(chaos.run())
    finally:
        chaos.stop_servers()
    ledger: Ledger = result["ledger"]
    kills = sum(1 for f in result["faults"] if f.kind == "SIGKILL engine")
    print(f"chaos: {opts.engines} engines, {opts.minutes:g} min, {kills} SIGKILLs, seed {opts.seed}")
    print(table([ledger]))
    print(ledger.summary())
    print(faults_table(result["faults"], chaos.t0))
    print("PASSED" if result["passed"] else "FAILED")
    if opts.json:
        Path(opts.json).write_text(json.dumps({
            "passed": result["passed"], "settled": result["settled"], "ledger": ledger.row(),
            "tried": result["tried"], "kills_that_hit": result["kills_that_hit"],
            "in_dlq": len(ledger.in_dlq), "indeterminate": len(ledger.indeterminate),
            "problems": ledger.problems(), "lost": sorted(ledger.lost), "summary": ledger.summary(),
            "faults": [{**f.__dict__, "at": round(f.at - chaos.t0, 2), "ended": round(f.ended - chaos.t0, 2),
                        "touched": len(f.touched)}
                       for f in result["faults"]],
            "table": table([ledger]), "faults_table": faults_table(result["faults"], chaos.t0),
        }, indent=2))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
