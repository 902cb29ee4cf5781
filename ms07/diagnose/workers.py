"""Which workers are alive, which crashed and which of those still matter.

A worker is live while its ``worker:heartbeat:<id>`` key exists, except when the key
outlives the worker: after a ``kill -9`` the key stays for ``heartbeat_ttl_seconds``
(60 s), and the queue check used to call the dead consumer live for that minute. So a
key whose beat is more than three intervals old (told by what is left of its TTL, not by
another host's clock), or whose process is gone from this very host, does not count.

A worker that stopped beating without saying goodbye is a WARNING only while it still
matters: it holds pending entries nobody took over, and no new worker came up on its
host. Otherwise it is history: one INFO line with when it crashed, until an operator
marks it seen with ``ms07 workers forget ID`` (audited).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from ms07 import keys
from ms07.diagnose.context import Context
from ms07.diagnose.model import fmt_duration

MISSED_BEATS = 3
GONE_AFTER = 86400.0  # a worker silent this long is history, not an incident


def process_gone(host: Any, pid: Any) -> bool:
    """True when ``host`` is this machine and no process ``pid`` runs on it."""
    if host != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. EPERM: it exists, owned by someone else
        return False
    return False


@dataclass
class Liveness:
    live: set[str] = field(default_factory=set)
    dead_keys: dict[str, str] = field(default_factory=dict)  # worker id -> why its key does not count


async def live_workers(ctx: Context) -> Liveness:
    """Worker ids (consumer name == worker id) with a heartbeat key that still means something."""
    queue = await ctx.queue()
    found = [k async for k in queue.redis.scan_iter(match=keys.HEARTBEAT_PATTERN, count=500)]
    out = Liveness()
    if not found:
        return out
    pipe = queue.redis.pipeline(transaction=False)
    for key in found:
        pipe.get(key)
        pipe.pttl(key)
    replies = await pipe.execute()
    service = ctx.settings.service
    too_old = MISSED_BEATS * service.heartbeat_interval_seconds + 5
    for key, raw, pttl in zip(found, replies[::2], replies[1::2], strict=True):
        wid = key.split(":", 2)[2]
        try:
            beat = json.loads(raw) if raw else {}
        except ValueError:
            beat = {}
        if not isinstance(beat, dict):
            beat = {}
        # Every beat sets the key with a TTL of heartbeat_ttl_seconds, so what is left of it
        # says how long ago the last beat was, with no clock of another host involved.
        age = service.heartbeat_ttl_seconds - pttl / 1000 if isinstance(pttl, int) and pttl >= 0 else None
        if process_gone(beat.get("host"), beat.get("pid")):
            out.dead_keys[wid] = f"process {beat.get('pid')} is gone from {beat.get('host')}"
        elif age is not None and age > too_old:
            out.dead_keys[wid] = f"last beat {fmt_duration(age)} ago"
        else:
            out.live.add(wid)
    return out


@dataclass
class Verdicts:
    stale: list[str] = field(default_factory=list)  # still holding entries, not replaced: WARNING
    crashed: list[str] = field(default_factory=list)  # history: INFO
    gone: list[str] = field(default_factory=list)  # silent for more than a day: INFO
    crashed_ids: list[str] = field(default_factory=list)


def judge(workers: list[dict[str, Any]], pending: dict[str, int] | None, stale_after: float,
          gone_after: float) -> Verdicts:
    """Sort silent workers: ``pending`` is the entries each consumer holds (None: Redis
    could not be read, so a silent worker keeps its WARNING unless it was replaced)."""
    out = Verdicts()
    fresh = [w for w in workers if w["status"] != "stopped" and float(w["seconds_since_update"]) <= stale_after]
    for w in workers:
        age = float(w["seconds_since_update"])
        if w["status"] in ("stopped", "forgotten") or age <= stale_after:
            continue
        label = f"{w['worker_id']} ({w['host']} pid {w['pid']}"
        if age > gone_after:
            out.gone.append(f"{label}, last beat {fmt_duration(age)} ago)")
            continue
        successor = next((n for n in fresh if n["host"] == w["host"] and n["started_at"] >= w["updated_at"]), None)
        holds = None if pending is None else pending.get(w["worker_id"], 0)
        when = str(w["updated_at"])[:19]
        if successor is not None:
            out.crashed.append(f"{label}) crashed at {when} UTC; {successor['worker_id']} runs on that host since")
        elif holds == 0:
            out.crashed.append(f"{label}) crashed at {when} UTC; its entries were taken over")
        else:
            held = f", holds {holds} pending entries" if holds else ""
            out.stale.append(f"{label}, last beat {fmt_duration(age)} ago{held})")
            continue
        out.crashed_ids.append(str(w["worker_id"]))
    return out
