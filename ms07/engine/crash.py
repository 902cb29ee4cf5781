"""Deterministic crash points, for the fault tests only (docs/reliability.md).

``MS07_CRASH_AT=<point>[,<point>...]`` makes the process exit hard (``os._exit(137)``, as
if SIGKILLed: no drain, no ack, no farewell) the first time it reaches that point;
``MS07_CRASH_SKIP=N`` lets N passes go by first. The points:

- ``engine_start``: an engine is starting (nothing opened yet): a worker that dies at once;
- ``after_http``: a delivery got its HTTP 2xx; its outcome is not yet in Postgres;
- ``after_commit``: outcomes are committed in Postgres; their entries are not yet acked;
- ``mid_batch``: a batch request was answered; none of its outcomes is recorded;
- ``scheduler_move``: due retries wait in the delayed set; the scheduler's move has not
  run (the move is one atomic Lua script: a crash can only fall before it or after it);
- ``scheduler_moved``: the move ran (entries are back in their stream); nothing else yet.

``MS07_CRASH_ON_PAYLOAD=<text>`` kills the process before delivering any payload that
contains ``<text>``: a poison message, which kills every worker that tries it.

Unset, a check costs one set lookup. Production never sets these variables.
"""

from __future__ import annotations

import os

CRASH_EXIT = 137
POINTS = ("engine_start", "after_http", "after_commit", "mid_batch", "scheduler_move", "scheduler_moved")
_armed = frozenset(p.strip() for p in os.environ.get("MS07_CRASH_AT", "").split(",") if p.strip())
_skip = int(os.environ.get("MS07_CRASH_SKIP", "0") or 0)
_poison = os.environ.get("MS07_CRASH_ON_PAYLOAD", "").encode() or None
_seen: dict[str, int] = {}

for _unknown in sorted(_armed - set(POINTS)):
    os.write(2, f"ms07: MS07_CRASH_AT names no crash point {_unknown!r} (known: {', '.join(POINTS)})\n".encode())


def armed(name: str) -> bool:
    """Whether a test asked for a crash at ``name`` (to skip work done only to find it)."""
    return name in _armed


def _exit(what: str) -> None:
    os.write(2, f"ms07: crash point {what} reached, exiting hard\n".encode())
    os._exit(CRASH_EXIT)


def point(name: str) -> None:
    if name in _armed:
        n = _seen.get(name, 0)
        _seen[name] = n + 1
        if n >= _skip:
            _exit(name)


def on_payload(payload: bytes) -> None:
    """Exit hard before delivering a payload holding the ``MS07_CRASH_ON_PAYLOAD`` text."""
    if _poison is not None and _poison in payload:
        _exit("on_payload")
