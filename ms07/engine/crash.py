"""Deterministic crash points, for the fault tests only.

``MS07_CRASH_AT=after_http`` (or ``after_commit``, ``mid_batch``, ``scheduler_move``)
makes the process exit hard (``os._exit(137)``, like SIGKILL) the first time it reaches
that point; ``MS07_CRASH_SKIP=N`` lets N passes go by first. Unset, a check costs one
set lookup.
"""

from __future__ import annotations

import os

CRASH_EXIT = 137
POINTS = ("after_http", "after_commit", "mid_batch", "scheduler_move")
_armed = frozenset(p for p in os.environ.get("MS07_CRASH_AT", "").split(",") if p)
_skip = int(os.environ.get("MS07_CRASH_SKIP", "0") or 0)
_seen: dict[str, int] = {}


def point(name: str) -> None:
    if name in _armed:
        n = _seen.get(name, 0)
        _seen[name] = n + 1
        if n >= _skip:
            os.write(2, f"ms07: crash point {name} reached, exiting hard\n".encode())
            os._exit(CRASH_EXIT)
