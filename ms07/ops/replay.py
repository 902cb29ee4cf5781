"""Replay by filter: ``ms07 replay`` and ``POST /api/v1/replays``.

Like a recover plan (ms07/recover/plan.py) it is reviewed before it runs: a dry run
counts and samples the jobs and writes nothing. Run, it freezes the selection
(``replay_items``) with an audit row (who, the filter, how many) in one transaction, then
puts the jobs back on the queue in throttled batches. Each batch marks its jobs enqueued
in the same transaction that makes them ``queued`` again, and only then adds them to the
stream; so a replay stopped anywhere (Ctrl-C, SIGKILL, ``DELETE``) and run again never
takes a job twice. A crash between that commit and the stream write leaves a batch
``queued`` in PostgreSQL and not in Redis: the reconciler enqueues it, as it does for a
submit that died at the same point.

A replayed job keeps its id (the receiver's ``Idempotency-Key``) and its attempts: the
numbering continues, with the destination's ``max_attempts`` as a fresh budget on top.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from ms07 import logs
from ms07.errors import Ms07Error, NotFound, UsageError
from ms07.ops import search
from ms07.store import audit, db, replays, status
from ms07.store.status import JobStatus

if TYPE_CHECKING:
    from ms07.config import Settings
    from ms07.queue import Queue

log = logs.get("replay")
# Finished jobs, in the order the enum declares them; delivered ones only when asked for.
PARKED = tuple(s.value for s in JobStatus if s in status.PARKED)
REPLAYABLE = tuple(s.value for s in JobStatus if s in status.TERMINAL)
FIELDS = ("destination", "status", "since", "until")
DEFAULT_RATE = 100.0
MAX_BATCH = 500
SAMPLE = 10


class ReplayBusy(Ms07Error):
    """Another process is running this replay."""

    exit_code = 1


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    filter: search.JobFilter
    include_delivered: bool = False

    def key(self) -> str:
        return f"{self.filter.key()}:{int(self.include_delivered)}"

    def doc(self) -> dict[str, Any]:
        since, until = self.filter.given
        return {"destination": self.filter.destination, "status": list(self.filter.statuses),
                "since": self.filter.since.isoformat() if self.filter.since else None,
                "until": self.filter.until.isoformat() if self.filter.until else None,
                "since_given": since, "until_given": until, "include_delivered": self.include_delivered}


def parked_request() -> ReplayRequest:
    """``dlq replay --all``: every parked job."""
    return parse_request({})


def parse_request(raw: Mapping[str, Any], include_delivered: Any = False) -> ReplayRequest:
    """The replay's filter, checked: it picks finished jobs only (failed and dead by
    default; delivered ones only when asked for with ``include_delivered``)."""
    unknown = [k for k in raw if k not in FIELDS]
    if unknown:
        raise UsageError(f"unknown field {unknown[0]!r}: a replay filters on {', '.join(FIELDS)}")
    if not isinstance(include_delivered, bool):
        raise UsageError("include_delivered must be true or false")
    flt = search.parse_filter(raw)
    statuses = flt.statuses or (PARKED + ((JobStatus.DELIVERED.value,) if include_delivered else ()))
    for s in statuses:
        if s not in REPLAYABLE:
            raise UsageError(f"status {s!r} cannot be replayed: a replay takes finished jobs (failed, dead; "
                             f"delivered with --include-delivered), and a {s} job is still in flight")
    if JobStatus.DELIVERED in statuses and not include_delivered:
        raise UsageError("status delivered needs --include-delivered (include_delivered: true): "
                         "those jobs reach their receiver a second time")
    return ReplayRequest(dataclasses.replace(flt, statuses=statuses), include_delivered)


def _sample_row(r: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()}


async def preview(conn: psycopg.AsyncConnection[Any], req: ReplayRequest) -> dict[str, Any]:
    """The dry run: how many jobs, a sample, and the unfinished replay a run would resume.
    Writes nothing."""
    matched, sample = await replays.count_and_sample(conn, req.filter, SAMPLE)
    pending = await replays.unfinished(conn, req.key())
    return {"dry_run": True, "matched": matched, "filter": req.doc(), "sample": [_sample_row(r) for r in sample],
            "resumes": shape(pending) if pending else None, "notes": list(req.filter.notes)}


async def plan(conn: psycopg.AsyncConnection[Any], req: ReplayRequest, operator: str, *,
               runner: str = "cli", rate: float = DEFAULT_RATE) -> tuple[dict[str, Any], bool]:
    """The replay to run: the unfinished one of this filter (resumed: True), else a new
    one with its selection frozen and audited. ``runner`` 'engine' (the API): should its
    engine die, another engine's upkeep continues it at ``rate``."""
    async with conn.transaction():
        found = await replays.unfinished(conn, req.key())
        if found is not None:
            return shape(found), True
        replay_id = uuid.uuid4().hex[:12]
        doc = req.doc()
        matched = await replays.create(conn, replay_id, req.filter, doc, req.key(), operator, runner, rate)
        await audit.record(conn, operator=operator, plan_id=replay_id, plan="replay", step="plan",
                           outcome="planned", detail=logs.scrub({"filter": doc, "matched": matched}))
    row = await replays.get(conn, replay_id)
    assert row is not None  # nosec B101 - narrows a type; the value is never None here
    return shape(row), False


def shape(row: dict[str, Any]) -> dict[str, Any]:
    done = row["enqueued"] + row["skipped"]
    return {"replay_id": row["id"], "status": row["status"], "filter": row["filter"], "operator": row["operator"],
            "matched": row["matched"], "enqueued": row["enqueued"], "skipped": row["skipped"],
            "progress": round(done / row["matched"], 4) if row["matched"] else 1.0,
            "created_at": row["created_at"].isoformat(), "updated_at": row["updated_at"].isoformat()}


async def get(conn: psycopg.AsyncConnection[Any], replay_id: str) -> dict[str, Any]:
    row = await replays.get(conn, replay_id)
    if row is None:
        raise NotFound(f"no replay {replay_id}")
    return shape(row)


async def cancel(conn: psycopg.AsyncConnection[Any], replay_id: str, operator: str) -> dict[str, Any]:
    """Stop a replay: its runner stops before its next batch; jobs already enqueued stay."""
    async with conn.transaction():
        row = await replays.get(conn, replay_id)
        if row is None:
            raise NotFound(f"no replay {replay_id}")
        if not await replays.set_status(conn, replay_id, "cancelled"):
            raise UsageError(f"replay {replay_id} is {row['status']}: nothing to cancel")
        await audit.record(conn, operator=operator, plan_id=replay_id, plan="replay", step="cancel",
                           outcome="cancelled", detail={"enqueued": row["enqueued"], "matched": row["matched"]})
    return await get(conn, replay_id)


def budgets(settings: Settings) -> tuple[dict[str, int], int]:
    """The fresh attempt budget a replayed job gets: its destination's max_attempts."""
    return ({name: d.max_attempts for name, d in settings.effective.items()},
            settings.distribution.max_attempts)


async def run(
    conn: psycopg.AsyncConnection[Any], queue: Queue, settings: Settings, replay_id: str, *,
    rate: float = DEFAULT_RATE, on_progress: Callable[[dict[str, Any]], None] | None = None,
    on_enqueued: Callable[[list[str]], None] | None = None, runner: str = "cli", taken_over_by: str | None = None,
) -> dict[str, Any]:
    """Enqueue the replay's pending jobs, ``rate`` a second at most, until none is left or
    it is cancelled. ``conn`` is held for the whole run (its session lock keeps a second
    runner out, and goes with the connection when the process dies). ``runner`` ('cli',
    'engine') is who resumes it if it stops; ``taken_over_by`` (a worker id): an engine
    continuing a replay whose runner is gone, audited as a resume."""
    from ms07.ops.dlq import requeue

    if not rate > 0:
        raise UsageError(f"rate {rate} must be above 0 (jobs a second)")
    batch = max(1, min(MAX_BATCH, int(rate)))
    if runner == "cli":  # an engine's settings already hold the database's destinations
        from ms07.ops.dest_admin import settings_in_force

        settings = await settings_in_force(conn, settings)
    per_dest, default = budgets(settings)
    async with db.autocommit(conn):
        row = await replays.get(conn, replay_id)
        if row is None:
            raise NotFound(f"no replay {replay_id}")
        if not await replays.try_lock(conn, replay_id):
            raise ReplayBusy(f"replay {replay_id} is being run by another process; "
                             f"follow it with GET /api/v1/replays/{replay_id}")
        statuses = tuple(row["filter"]["status"])
        try:
            # Read again under the lock: finished or cancelled while we waited, it stays so.
            row = await replays.get(conn, replay_id)
            if row is None or row["status"] not in replays.UNFINISHED:
                return await get(conn, replay_id)
            await replays.take(conn, replay_id, runner, rate)
            if taken_over_by is not None:
                await audit.record(conn, operator=row["operator"], plan_id=replay_id, plan="replay", step="run",
                                   outcome="resumed",
                                   detail={"by": taken_over_by, "was": row["status"], "matched": row["matched"],
                                           "enqueued": row["enqueued"], "skipped": row["skipped"]})
            await replays.set_status(conn, replay_id, "running", only_from=("interrupted",))
            while True:
                started = time.monotonic()
                row = await replays.get(conn, replay_id)
                assert row is not None  # nosec B101 - narrows a type; the value is never None here
                if row["status"] != "running":  # cancelled
                    break
                async with conn.transaction():
                    taken, reset = await replays.step(conn, replay_id, batch, statuses, per_dest, default)
                await requeue(queue, reset)
                if on_enqueued is not None and reset:
                    on_enqueued([r[0] for r in reset])
                if on_progress is not None:
                    on_progress(await get(conn, replay_id))
                if taken == 0:
                    break
                # Throttle: this batch's share of a second at ``rate``.
                await asyncio.sleep(max(0.0, taken / rate - (time.monotonic() - started)))
            final = await get(conn, replay_id)
            if final["status"] == "running":
                await replays.set_status(conn, replay_id, "done", only_from=("running",))
                await audit.record(conn, operator=final["operator"], plan_id=replay_id, plan="replay",
                                   step="run", outcome="done",
                                   detail={"matched": final["matched"], "enqueued": final["enqueued"],
                                           "skipped": final["skipped"]})
            return await get(conn, replay_id)
        except (asyncio.CancelledError, KeyboardInterrupt):
            await asyncio.shield(_interrupted(conn, replay_id))
            raise
        finally:
            if not conn.closed:
                await replays.unlock(conn, replay_id)


async def _interrupted(conn: psycopg.AsyncConnection[Any], replay_id: str) -> None:
    try:
        if await replays.set_status(conn, replay_id, "interrupted", only_from=("running",)):
            row = await get(conn, replay_id)
            await audit.record(conn, operator=row["operator"], plan_id=replay_id, plan="replay", step="run",
                               outcome="interrupted", detail={"matched": row["matched"], "enqueued": row["enqueued"]})
    except psycopg.Error as exc:  # the connection itself may be what broke
        log.warning("could not mark the replay interrupted", replay_id=replay_id, error=logs.clip(str(exc), 200))
