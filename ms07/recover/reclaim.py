"""``recover reclaim-pending``: pending entries of dead consumers, taken over safely.

A consumer is dead when its ``worker:heartbeat:<name>`` key is gone and it has not touched
the stream for ``min_idle_ms``. Its pending entries (read, never acknowledged) are listed
per consumer with XPENDING and taken with XCLAIM — not XAUTOCLAIM, which takes idle
entries from *any* consumer, including a live one in a slow delivery — with a minimum
idle time, so an entry a live engine just claimed is left to it. Then either:

- given to a live consumer, their idle time set to ``claim_idle_seconds`` so that the
  engine's reclaimer delivers them on its next pass, the delivery count (poison detection)
  kept; or
- put back into the stream: claimed by a consumer of this plan, then per entry one MULTI
  of XADD (a copy, new id) + XACK + XDEL of the old id. The delivery count starts again.

Only then are the dead consumers removed, each by one Lua script that deletes it only
while XPENDING shows it holds nothing (XGROUP DELCONSUMER on a consumer with pending
entries makes them unclaimable). Entries whose payload was XDEL'd while pending are
acknowledged and reported: their jobs come back with ``recover requeue-from-db``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from ms07 import keys
from ms07.config import Settings
from ms07.options import opt
from ms07.recover import consumers
from ms07.recover.plan import Check, Outcome, Plan, PlanContext, Step

BATCH = 500


@dataclass
class Options:
    to: str | None = opt(
        "--to", "Give the entries to this live consumer (default: any live one).", default=None
    )
    requeue: bool = opt(
        "--requeue", "Back into the stream even if a consumer is live.", default=False
    )
    min_idle_ms: int = opt(
        "--min-idle-ms", "Leave entries touched more recently.", default=1000, min=0
    )


def build(settings: Settings, opts: Options, args: list[str] | None = None) -> Plan:
    streams = [keys.stream(q) for q in settings.distribution.priorities]
    claim_idle_ms = int(settings.distribution.claim_idle_seconds * 1000)

    async def survey(ctx: PlanContext) -> consumers.Activity:
        queue = await ctx.queue()
        act = await consumers.activity(queue.redis, queue.priorities, opts.min_idle_ms)
        ctx.facts["dead"] = [(c.queue, c.name) for c in act.dead]
        if opts.requeue or not (opts.to or act.heartbeats):
            ctx.facts["target"] = None
        else:
            ctx.facts["target"] = opts.to or act.heartbeats[0]
        return act

    def holder(ctx: PlanContext) -> str:
        return f"ms07-recover-{ctx.plan_id or 'plan'}"

    async def holders(ctx: PlanContext) -> list[tuple[str, str]]:
        """Where this plan's own holder consumer exists (it exists only where it claimed)."""
        queue = await ctx.queue()
        found = []
        for q in queue.priorities:
            try:
                rows = await queue.redis.xinfo_consumers(keys.stream(q), keys.GROUP)
            except ResponseError:  # no such stream or group: nothing claimed there
                continue
            if any(r["name"] == holder(ctx) for r in rows):
                found.append((q, holder(ctx)))
        return found

    # ---------------------------------------------------------------- 1 find

    async def reachable(ctx: PlanContext) -> Check:
        act = await survey(ctx)
        if opts.to and opts.to not in act.heartbeats:
            return Check.failed(f"--to {opts.to}: that consumer has no live heartbeat")
        held = sum(c.pending for c in act.dead)
        return Check.passed(
            f"{len(act.dead)} consumer(s) without a heartbeat hold {held} pending entries"
        )

    async def find(ctx: PlanContext) -> Outcome:
        act = await survey(ctx)
        ctx.reporter.table(
            "consumers of the group",
            ["queue", "consumer", "pending", "idle (s)", "heartbeat", "state"],
            [
                [
                    c.queue,
                    c.name,
                    c.pending,
                    round(c.idle_ms / 1000, 1),
                    "yes" if c.heartbeat else "no",
                    "live" if c.live else "dead",
                ]
                for c in act.consumers
            ],
        )
        dead = act.dead
        target = ctx.facts["target"]
        how = f"to live consumer {target}" if target else "back into the stream"
        return Outcome(
            f"{len(dead)} dead consumer(s) holding {sum(c.pending for c in dead)} entries; "
            f"they go {how}",
            detail=act.as_dict(),
        )

    # ---------------------------------------------------------------- 2 take over

    async def take_over(ctx: PlanContext) -> Outcome:
        if "dead" not in ctx.facts:
            await survey(ctx)
        queue = await ctx.queue()
        redis: Any = queue.redis  # redis-py types stream replies too loosely to help here
        target = ctx.facts["target"]
        moved = requeued = vanished = 0
        for q, name in ctx.facts["dead"]:
            stream = keys.stream(q)
            while True:
                rows = await redis.xpending_range(
                    stream,
                    keys.GROUP,
                    min="-",
                    max="+",
                    count=BATCH,
                    consumername=name,
                    idle=opts.min_idle_ms,
                )
                ids = [r["message_id"] for r in rows]
                if not ids:
                    break
                if target:
                    claimed = await redis.xclaim(
                        stream, keys.GROUP, target, opts.min_idle_ms, ids, idle=claim_idle_ms
                    )
                else:
                    claimed = await redis.xclaim(
                        stream, keys.GROUP, holder(ctx), opts.min_idle_ms, ids
                    )
                got = {i: f for i, f in (c for c in claimed or [] if c) if f is not None}
                if target:
                    moved += len(got)
                else:
                    for entry_id, fields in got.items():
                        pipe = redis.pipeline(transaction=True)
                        pipe.xadd(stream, fields)
                        pipe.xack(stream, keys.GROUP, entry_id)
                        pipe.xdel(stream, entry_id)
                        await pipe.execute()
                        requeued += 1
                gone = await _gone(redis, stream, [i for i in ids if i not in got])
                if gone:
                    # The payload was XDEL'd while pending: nothing to deliver, ack the id.
                    await redis.xack(stream, keys.GROUP, *gone)
                    vanished += len(gone)
                if not got and not gone:
                    break  # touched by a live engine meanwhile: left to it
        parts = [f"{moved} given to {target}" if target else f"{requeued} put back into the stream"]
        status = "ok"
        if vanished:
            parts.append(
                f"{vanished} had no payload left (acknowledged; run `ms07 recover requeue-from-db` "
                "to re-enqueue their jobs)"
            )
            status = "warning"
        return Outcome(
            "; ".join(parts),
            status,
            {"moved": moved, "requeued": requeued, "vanished": vanished, "target": target},
        )

    async def nothing_held(ctx: PlanContext) -> Check:
        queue = await ctx.queue()
        left = []
        for q, name in [*ctx.facts["dead"], *await holders(ctx)]:
            summary = await queue.redis.xpending_range(
                keys.stream(q), keys.GROUP, min="-", max="+", count=1, consumername=name
            )
            if summary:
                left.append(name)
        if left:
            return Check.failed(
                f"dead consumer(s) still hold entries (touched within {opts.min_idle_ms} ms; "
                f"run again): {', '.join(sorted(set(left)))}"
            )
        return Check.passed("no dead consumer holds a pending entry")

    # ---------------------------------------------------------------- 3 delete consumers

    async def remove(ctx: PlanContext) -> Outcome:
        if "dead" not in ctx.facts:
            await survey(ctx)
        queue = await ctx.queue()
        script = queue.redis.register_script(consumers.DELETE_IF_EMPTY)
        beats = set(await consumers.heartbeats(queue.redis))
        names = [*ctx.facts["dead"], *await holders(ctx)]
        removed, kept = [], []
        for q, name in names:
            if name in beats:
                kept.append(f"{name} (came back to life)")
                continue
            result = await script(keys=[keys.stream(q)], args=[keys.GROUP, name])
            if int(result) < 0:
                kept.append(f"{name} (still holds entries)")
            elif (q, name) in ctx.facts["dead"]:
                removed.append(name)
        ctx.facts["removed"] = [(q, n) for q, n in ctx.facts["dead"] if n in removed]
        message = f"removed {len(removed)} dead consumer(s)" + (
            f"; kept {', '.join(kept)}" if kept else ""
        )
        return Outcome(message, "warning" if kept else "ok", {"removed": removed, "kept": kept})

    async def removed(ctx: PlanContext) -> Check:
        queue = await ctx.queue()
        still = []
        for q, name in ctx.facts.get("removed", []):
            rows = await queue.redis.xinfo_consumers(keys.stream(q), keys.GROUP)
            if any(r["name"] == name for r in rows):
                still.append(name)
        if still:
            return Check.failed(f"still in the group: {', '.join(still)}")
        return Check.passed("the removed consumers are gone from XINFO CONSUMERS")

    def claim_cmd(c: PlanContext) -> str:
        target = c.facts.get("target")
        out = []
        for s in streams:
            listing = (
                f"redis-cli XPENDING {s} {keys.GROUP} IDLE {opts.min_idle_ms} - + {BATCH} "
                "<dead-consumer>"
            )
            if target:
                out.append(
                    f"{listing}; redis-cli XCLAIM {s} {keys.GROUP} {target} {opts.min_idle_ms} "
                    f"<ids> IDLE {claim_idle_ms}"
                )
            else:
                out.append(
                    f"{listing}; redis-cli XCLAIM {s} {keys.GROUP} {holder(c)} {opts.min_idle_ms} "
                    "<ids>; "
                    f"then per entry: MULTI; XADD {s} * <fields>; XACK {s} {keys.GROUP} <id>; "
                    f"XDEL {s} <id>; EXEC"
                )
        return "; ".join(out)

    return Plan(
        name="reclaim-pending",
        summary="Take the pending entries of dead consumers, then remove those consumers.",
        cli="ms07 recover reclaim-pending",
        args=list(args or []),
        steps=[
            Step(
                "Find the consumers without a live heartbeat",
                "; ".join(f"redis-cli XINFO CONSUMERS {s} {keys.GROUP}" for s in streams)
                + f"; redis-cli EXISTS {keys.heartbeat('<consumer>')}",
                find,
                reachable,
                changes=False,
                if_interrupted="nothing was changed",
            ),
            Step(
                "Take over their pending entries",
                claim_cmd,
                take_over,
                None,
                nothing_held,
                if_interrupted=(
                    "some entries may be moved already, the rest still pending; running the plan "
                    "again finishes it (an entry moved back into the stream is never lost)"
                ),
            ),
            Step(
                "Remove the dead consumers that hold nothing",
                "; ".join(
                    f"redis-cli XGROUP DELCONSUMER {s} {keys.GROUP} <dead-consumer>"
                    for s in streams
                )
                + "   # only while XPENDING shows it holds nothing (checked atomically in one "
                "script)",
                remove,
                None,
                removed,
                if_interrupted="some dead consumers may be removed, others not",
            ),
        ],
    )


async def _gone(redis: Any, stream: str, ids: list[str]) -> list[str]:
    if not ids:
        return []
    pipe = redis.pipeline(transaction=False)
    for i in ids:
        pipe.xrange(stream, min=i, max=i, count=1)
    found = await pipe.execute()
    return [i for i, rows in zip(ids, found, strict=True) if not rows]
