"""The entries one worker holds, from its read until its outcome is acked.

The reader holds them, the committer (or a failed dispatch, or shutdown) releases them;
their count is what ``max_held`` bounds, and with it the worker's memory."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from ms07.metrics import Metrics
from ms07.queue import Entry
from ms07.store import jobs


@dataclass(slots=True)
class Held:
    """An entry this worker holds, from read until its outcome is acked."""

    entry: Entry
    job: jobs.ClaimedJob | None = None
    since: float = 0.0


class HeldEntries:
    def __init__(self, metrics: Metrics) -> None:
        # (queue, entry id) -> Held. The engine keeps a reference to this dict itself:
        # the delivery path looks an entry up once per job.
        self.by_key: dict[tuple[str, str], Held] = {}
        self.capacity = asyncio.Event()  # set when a slot may have been freed
        self.idle = asyncio.Event()  # set when nothing is held
        self._gauge = metrics.in_flight

    def __len__(self) -> int:
        return len(self.by_key)

    def hold(self, entries: list[Entry]) -> None:
        now = time.monotonic()
        by_key = self.by_key
        for e in entries:
            by_key[(e.queue, e.entry_id)] = Held(e, None, now)
        self.idle.clear()

    def get(self, entry: Entry) -> Held | None:
        return self.by_key.get((entry.queue, entry.entry_id))

    def release(self, helds: list[Held]) -> None:
        for h in helds:
            self.by_key.pop((h.entry.queue, h.entry.entry_id), None)
        self._gauge.set(len(self.by_key))
        self.capacity.set()
        if not self.by_key:
            self.idle.set()

    def entries(self) -> list[Held]:
        return list(self.by_key.values())
