"""The replays an engine runs: those started through ``POST /api/v1/replays``, and those
it takes over from an engine that is gone.

A replay's runner holds a PostgreSQL session lock on it for the whole run
(ms07/store/replays.py): the lock is the lease. It goes with the runner's connection, so
when that engine is SIGKILLed, loses its host or stops, PostgreSQL lets it go at once. The
upkeep's ``replays`` pass (``distribution.replay_resume_interval_seconds``) looks at the
unfinished replays whose runner is an engine and tries each it does not already run: one
replica gets the lock and continues the replay at the rate it was started at, the others
find it taken and leave it (a replay planned in the last ``FRESH_SECONDS`` is left to the
engine that planned it, which takes its lock a moment after). Exactly once per job still
holds: a job leaves ``pending`` in ``replay_items`` in the transaction that makes it
``queued``, whoever runs the batch.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ms07 import logs
from ms07.store import replays as store

if TYPE_CHECKING:
    from ms07.engine.engine import Engine

log = logs.get("replay")
# A replay planned this recently is left to the engine that planned it (it takes the lock
# a moment after its plan commits); one whose engine died that soon is taken over after.
FRESH_SECONDS = 5.0


class ReplayRunner:
    """One background task per replay this engine runs."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.tasks: dict[str, asyncio.Task[Any]] = {}

    def running(self) -> list[str]:
        return [rid for rid, task in self.tasks.items() if not task.done()]

    def start(self, replay_id: str, rate: float, *, taking_over: bool = False) -> bool:
        """Run ``replay_id`` in the background unless this engine already does."""
        task = self.tasks.get(replay_id)
        if task is not None and not task.done():
            return False
        task = asyncio.create_task(self._run(replay_id, rate, taking_over), name=f"replay-{replay_id}")
        self.tasks[replay_id] = task
        task.add_done_callback(lambda t: self.tasks.pop(replay_id, None) if self.tasks.get(replay_id) is t else None)
        return True

    async def adopt(self) -> int:
        """The upkeep pass: try each unfinished engine replay this engine does not run
        (the lock decides who continues it). Returns how many it tried."""
        from ms07.ops.replay import DEFAULT_RATE

        engine = self.engine
        if engine.draining or engine.pool is None:
            return 0
        async with engine.pool.connection() as conn:
            candidates = await store.engine_unfinished(conn, FRESH_SECONDS)
        tried = 0
        for replay_id, rate in candidates:
            if self.start(replay_id, rate or DEFAULT_RATE, taking_over=True):
                tried += 1
        return tried

    async def _run(self, replay_id: str, rate: float, taking_over: bool) -> None:
        from ms07.ops import replay

        engine = self.engine
        assert engine.pool is not None and engine.queue is not None  # nosec B101 - started engines only
        try:
            async with engine.pool.connection() as conn:
                result = await replay.run(conn, engine.queue, engine.settings, replay_id, rate=rate, runner="engine",
                                          taken_over_by=engine.worker_id if taking_over else None)
            if taking_over and result["status"] == "done":
                log.info("replay taken over from a runner that was gone, and finished", replay_id=replay_id,
                         enqueued=result["enqueued"], matched=result["matched"])
        except replay.ReplayBusy:
            # Its runner is alive (this pass runs every few seconds on every replica).
            log.debug("replay run by another process", replay_id=replay_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("replay failed; an engine's upkeep takes it up again", replay_id=replay_id)

    async def stop(self) -> None:
        """Shutdown: each replay marks itself interrupted and stops; another engine (or
        this one started again) continues it."""
        tasks = [t for t in self.tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
