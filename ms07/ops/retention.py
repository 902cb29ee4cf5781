"""A retention run: what the policy removes, in bounded batches, optionally archived first.

Shared by ``ms07 db prune`` and the engine's upkeep (one replica at a time, under
:data:`LOCK`). Each batch is one short transaction: take (lock) up to ``batch_size``
rows, archive them if asked (written, read back and counted before anything is
deleted), delete, commit, pause. A batch that waits past ``lock_timeout_ms`` is given up
and the pass ends ``partial``: the next run goes on where this one stopped.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import gzip
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from ms07 import keys, logs
from ms07.config import RetentionConfig
from ms07.errors import Ms07Error, UsageError
from ms07.store import retention as store

log = logs.get("retention")

# pg_try_advisory_lock key: one retention run at a time across replicas and CLIs.
LOCK = 0x6D733138  # "ms18"
TABLES = ("distribution_jobs", "distribution_attempts", "payloads", "dlq_entries")


class Busy(Ms07Error):
    """Another retention run (an engine replica, or ``ms07 db prune``) holds the lock."""


class ArchiveError(Exception):
    """An archive file did not read back as written: nothing of that batch was removed."""


@dataclass
class Run:
    """One run's report (``as_json`` is the ``--json`` shape)."""

    dry_run: bool
    policy: dict[str, Any]
    plan: dict[str, dict[str, int]] = field(default_factory=dict)
    removed: dict[str, dict[str, int]] = field(default_factory=lambda: {t: {"rows": 0, "bytes": 0} for t in TABLES})
    archive: dict[str, Any] | None = None
    outcome: str = "done"  # done | partial | error
    note: str | None = None
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def add(self, table: str, rows: int, size: int = 0) -> None:
        self.removed[table]["rows"] += rows
        self.removed[table]["bytes"] += size

    def as_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "policy": self.policy, "plan": self.plan,
                "removed": None if self.dry_run else self.removed, "archive": self.archive,
                "outcome": self.outcome, "note": self.note}


def policy_of(ret: RetentionConfig) -> dict[str, Any]:
    return {"delivered_days": ret.delivered_days or None, "dead_days": ret.dead_days or None,
            "attempts_days": ret.attempts_days or None, "payload_days": ret.payload_days or None}


def check_archive_dir(path: str | os.PathLike[str]) -> Path:
    """The archive directory, checked writable before anything is removed (UsageError)."""
    target = Path(path).expanduser()
    if not target.is_dir():
        raise UsageError(f"--archive: {target} is not a directory")
    probe = target / f".ms07-archive-probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"--archive: cannot write in {target}: {exc.strerror}") from None
    return target


async def prune(conn: psycopg.AsyncConnection[Any], ret: RetentionConfig, *, redis: Any = None,
                dry_run: bool = False, archive_dir: str | os.PathLike[str] | None = None, runner: str = "cli",
                should_stop: Callable[[], bool] = lambda: False,
                on_plan: Callable[[Run], None] | None = None,
                on_removed: Callable[[str, int, int], None] | None = None) -> Run:
    """Plan, then (unless ``dry_run``) remove what ``ret`` says, batch by batch, under the
    session lock :data:`LOCK` (:class:`Busy` when another run holds it). ``redis``: the
    DLQ stream entries of removed parked jobs go too. ``on_plan(run)`` once the plan is
    made, before anything is removed; ``on_removed(table, rows, bytes)`` after each batch
    (the engine's metrics)."""
    archive = check_archive_dir(archive_dir) if archive_dir is not None else None
    was_autocommit = conn.autocommit
    await conn.set_autocommit(True)
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK,))
    row = await cur.fetchone()
    if not (row and row[0]):
        await conn.set_autocommit(was_autocommit)
        raise Busy("another retention run is in progress (an engine replica or ms07 db prune); try again later")
    try:
        return await _prune(conn, ret, redis, dry_run, archive, runner, should_stop, on_plan, on_removed)
    finally:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            await conn.rollback()
        await conn.set_autocommit(True)
        await conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK,))
        await conn.set_autocommit(was_autocommit)


async def _prune(conn: psycopg.AsyncConnection[Any], ret: RetentionConfig, redis: Any, dry_run: bool,
                 archive: Path | None, runner: str, should_stop: Callable[[], bool],
                 on_plan: Callable[[Run], None] | None,
                 on_removed: Callable[[str, int, int], None] | None) -> Run:
    run = Run(dry_run, policy_of(ret))
    ages = store.Ages.of(ret)
    await conn.set_autocommit(False)
    try:
        async with conn.transaction():
            await store.set_timeouts(conn, ret.lock_timeout_ms, max(ret.statement_timeout_ms, 300_000))
            run.plan = await store.plan(conn, ages)
    except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled) as exc:
        raise Busy(f"retention could not plan: {type(exc).__name__} (a lock held too long, or the "
                   "tables too big to count in time); nothing was removed") from None
    run.plan["dlq_entries"] = {"rows": await dlq_candidates(conn, redis, ages.parked, remove=False), "bytes": 0}
    if on_plan is not None:
        on_plan(run)
    if dry_run or ret.off:
        return run
    if archive is not None:
        run.archive = {"dir": str(archive), "files": [], "jobs": 0, "attempts": 0}
    batcher = _Batcher(conn, ret, run, archive, should_stop, on_removed)
    try:
        for name, statuses, age_of in store.JOB_PASSES:
            await batcher.jobs(name, statuses, age_of(ages))
        await batcher.attempts(ages.attempts)
        await batcher.payloads(ages.payload)
        removed = await dlq_candidates(conn, redis, ages.parked, remove=True)
        run.add("dlq_entries", removed)
        if on_removed and removed:
            on_removed("dlq_entries", removed, 0)
    except ArchiveError as exc:
        run.outcome, run.note = "error", str(exc)
    except BaseException as exc:
        run.outcome, run.note = "error", logs.clip(f"{type(exc).__name__}: {exc}", 300)
        raise
    finally:
        try:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                await conn.rollback()
            async with conn.transaction():
                await store.record_run(conn, started_at=run.started_at, runner=runner, dry_run=False,
                                       outcome=run.outcome, removed=run.removed)
        except psycopg.Error as exc:  # the connection the run failed with: the run's own error wins
            log.warning("could not record the retention run", error=logs.clip(str(exc), 200))
    return run


class _Batcher:
    def __init__(self, conn: psycopg.AsyncConnection[Any], ret: RetentionConfig, run: Run, archive: Path | None,
                 should_stop: Callable[[], bool], on_removed: Callable[[str, int, int], None] | None) -> None:
        self.conn, self.ret, self.run, self.archive = conn, ret, run, archive
        self.should_stop, self.on_removed = should_stop, on_removed
        self.stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.files = 0

    def _removed(self, table: str, rows: int, size: int) -> None:
        self.run.add(table, rows, size)
        if self.on_removed and rows:
            self.on_removed(table, rows, size)

    async def _batches(self, one: Callable[[], Any]) -> None:
        """Run ``one`` (a batch in its own transaction; returns rows taken) until it takes
        fewer than a batch, pausing between batches; a lock or statement timeout ends the
        pass as ``partial``."""
        while True:
            if self.should_stop():
                self.run.outcome, self.run.note = "partial", "stopped before the end; the next run goes on"
                return
            try:
                async with self.conn.transaction():
                    await store.set_timeouts(self.conn, self.ret.lock_timeout_ms, self.ret.statement_timeout_ms)
                    taken = await one()
            except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled) as exc:
                self.run.outcome = "partial"
                self.run.note = f"a batch gave up ({type(exc).__name__}); the next run goes on"
                log.warning("retention batch gave up; the next run goes on", error=logs.clip(str(exc), 200))
                return
            if taken < self.ret.batch_size:
                return
            await asyncio.sleep(self.ret.batch_pause_seconds)

    async def jobs(self, name: str, statuses: str, age: float | None) -> None:
        async def one() -> int:
            ids = await store.take_jobs(self.conn, statuses, age, self.ret.batch_size)
            if not ids:
                return 0
            if self.archive is not None:
                rows = await store.read_jobs(self.conn, ids)
                self._write(f"jobs-{name}", rows, jobs=len(rows), attempts=sum(len(r["attempts"]) for r in rows))
            n, size, an, asize = await store.delete_jobs(self.conn, ids)
            self._removed("distribution_jobs", n, size)
            self._removed("distribution_attempts", an, asize)
            return len(ids)

        await self._batches(one)

    async def attempts(self, age: float | None) -> None:
        async def one() -> int:
            ids = await store.take_attempts(self.conn, age, self.ret.batch_size)
            if not ids:
                return 0
            if self.archive is not None:
                rows = await store.read_attempts(self.conn, ids)
                self._write("attempts", [{"kind": "attempt", **r} for r in rows], jobs=0, attempts=len(rows))
            n, size = await store.delete_attempts(self.conn, ids)
            self._removed("distribution_attempts", n, size)
            return len(ids)

        await self._batches(one)

    async def payloads(self, age: float | None) -> None:
        after: list[Any] = [dt.datetime(1970, 1, 1, tzinfo=dt.UTC)]

        async def one() -> int:
            n, size, newest = await store.expunge_old_payloads(self.conn, age, self.ret.batch_size, after[0])
            if newest is not None:
                after[0] = newest
            self._removed("payloads", n, size)
            return n

        await self._batches(one)

    def _write(self, what: str, rows: list[dict[str, Any]], *, jobs: int, attempts: int) -> None:
        if self.archive is None or self.run.archive is None:
            raise RuntimeError("archive write without an archive directory")
        self.files += 1
        final = self.archive / f"ms07-prune-{self.stamp}-{self.files:05d}-{what}.jsonl.gz"
        part = final.with_name(final.name + ".part")
        try:
            with gzip.open(part, "wt", encoding="utf-8") as out:
                for row in rows:
                    out.write(json.dumps(row, default=_plain, ensure_ascii=False, separators=(",", ":")) + "\n")
            with open(part, "rb") as raw:
                os.fsync(raw.fileno())
            got_jobs = got_attempts = 0
            with gzip.open(part, "rt", encoding="utf-8") as back:
                for line in back:
                    row = json.loads(line)
                    if row.get("kind") == "attempt":
                        got_attempts += 1
                    else:
                        got_jobs, got_attempts = got_jobs + 1, got_attempts + len(row["attempts"])
        except (OSError, ValueError, KeyError) as exc:
            raise ArchiveError(f"archive {part} could not be written and read back: {exc}; nothing of that "
                               "batch was removed") from None
        if (got_jobs, got_attempts) != (jobs, attempts):
            raise ArchiveError(f"archive {part} read back {got_jobs} jobs and {got_attempts} attempts, "
                               f"wrote {jobs} and {attempts}; nothing of that batch was removed")
        part.rename(final)
        self.run.archive["files"].append(final.name)
        self.run.archive["jobs"] += jobs
        self.run.archive["attempts"] += attempts


def _plain(value: Any) -> Any:
    if isinstance(value, bytes | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"cannot archive a {type(value).__name__}")


async def dlq_candidates(conn: psycopg.AsyncConnection[Any], redis: Any, age: float | None, *,
                         remove: bool) -> int:
    """DLQ stream entries older than the dead-job age whose job is no longer parked in
    PostgreSQL (removed by retention, purged, or never stored) or is past that age too
    (this run removes it): counted, or removed.
    Stream ids are times, so only the old end of the stream is read."""
    if redis is None or age is None:
        return 0
    horizon = f"{int((time.time() - age) * 1000)}-0"
    start, found = "-", 0
    while True:
        chunk = await redis.xrange(keys.DLQ, min=start, max=horizon, count=500)
        if not chunk:
            return found
        entries = [(_text(eid), {_text(k): _text(v) for k, v in f.items()}) for eid, f in chunk]
        ids = [f.get("distribution_id", "") for _, f in entries]
        valid = [i for i in ids if _is_uuid(i)]
        kept = await store.parked_within(conn, valid, age)
        await conn.rollback()
        doomed = [eid for eid, f in entries if f.get("distribution_id", "") not in kept]
        if doomed and remove:
            await redis.xdel(keys.DLQ, *doomed)
        found += len(doomed)
        if len(chunk) < 500:
            return found
        start = "(" + entries[-1][0]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
        return True
    except ValueError:
        return False
