"""``recover queue-full``: the guide's "Recovery da Queue Full" (docs/architecture.md), without its data loss.

The guide saved key names (``--scan | head -1000``) and then DEL'd the queue. Here:
scale to 0 and wait until nothing consumes -> back up every entry of every queue stream
and every delayed retry, verified by reading the file back -> remove exactly the entries
the verified file holds -> scale back -> watch the depth. ``ms07 queue restore FILE``
puts the entries back.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path

from ms07 import keys
from ms07.config import Settings
from ms07.ops import backup
from ms07.options import opt
from ms07.recover import consumers, procedures
from ms07.recover.plan import Check, Outcome, Plan, PlanContext, Step, StepFailed

PROBE_CHUNK = 1000


@dataclass
class Options:
    replicas: int | None = opt(
        "--replicas", "Scale back to N (default: the count before).", default=None, min=0
    )
    backup: str | None = opt(
        "--backup", "Backup file (default: STATE_DIR/backups/queue-<time>.jsonl).", default=None,
        path=True,
    )
    watch_seconds: float = opt(
        "--watch-seconds", "Watch the depth this long (0: skip).", default=60.0, min=0
    )
    # A consumer idle this long without a heartbeat is not consuming.
    idle_seconds: float = opt(
        "--idle-seconds", "Idle this long without heartbeat: stopped.", default=5.0, min=0.1
    )
    consumer_timeout: float = opt(
        "--consumer-timeout", "Wait this long for them to stop.", default=180.0, min=1
    )
    timeout: float = procedures.timeout()  # each Kubernetes wait


def default_backup_path(settings: Settings) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return settings.resolved_state_dir() / "backups" / f"queue-{stamp}.jsonl"


def build(settings: Settings, opts: Options, args: list[str] | None = None) -> Plan:
    path = Path(opts.backup).expanduser() if opts.backup else default_backup_path(settings)
    streams = [keys.stream(q) for q in settings.distribution.priorities]
    delayed = [keys.delayed(q) for q in settings.distribution.priorities]
    idle_ms = int(opts.idle_seconds * 1000)

    def kubectl(ctx: PlanContext) -> str:
        return f"-n {ctx.kube.namespace}"

    def target(ctx: PlanContext) -> int | None:
        return opts.replicas if opts.replicas is not None else ctx.facts.get("previous_replicas")

    # ---------------------------------------------------------------- 1 scale to 0

    async def cluster_reachable(ctx: PlanContext) -> Check:
        spec, current = await ctx.kube.get_scale()
        ctx.facts.setdefault("previous_replicas", spec)
        return Check.passed(f"{ctx.kube.target} wants {spec} replicas, {current} running")

    async def scale_down(ctx: PlanContext) -> Outcome:
        spec, _ = await ctx.kube.get_scale()
        ctx.facts["previous_replicas"] = spec
        if opts.replicas is None:
            ctx.resume["--replicas"] = str(spec)
        if spec:
            await ctx.kube.scale(0)
        await ctx.kube.wait_replicas(0, opts.timeout)
        return Outcome(f"scaled from {spec} to 0 replicas", detail={"previous_replicas": spec})

    async def at_zero(ctx: PlanContext) -> Check:
        state = await ctx.kube.deployment_state()
        if state.replicas != 0 or state.current != 0:
            return Check.failed(f"{ctx.kube.target} still has pods ({state.describe()})")
        return Check.passed("0 replicas, no pod counted by the deployment")

    # ---------------------------------------------------------------- 2 consumers idle

    async def redis_reachable(ctx: PlanContext) -> Check:
        queue = await ctx.queue()
        act = await consumers.activity(queue.redis, queue.priorities, idle_ms)
        return Check.passed(f"Redis answers; now {act.describe()}")

    async def consumers_stopped(ctx: PlanContext) -> Check:
        queue = await ctx.queue()
        act = await consumers.activity(queue.redis, queue.priorities, idle_ms)
        if act.live_names():
            return Check.failed(f"consumers still active: {act.describe()}")
        return Check.passed(act.describe())

    async def wait_idle(ctx: PlanContext) -> Outcome:
        queue = await ctx.queue()
        deadline = time.monotonic() + opts.consumer_timeout
        shown = ""
        while True:
            act = await consumers.activity(queue.redis, queue.priorities, idle_ms)
            if not act.live_names():
                return Outcome(act.describe(), detail=act.as_dict())
            if act.describe() != shown:
                shown = act.describe()
                ctx.reporter.info(f"waiting: {shown}")
            if time.monotonic() >= deadline:
                raise StepFailed(
                    f"after {opts.consumer_timeout:g}s {act.describe()} (heartbeats expire "
                    "after their TTL; a pod outside the deployment may still consume)"
                )
            await asyncio.sleep(0.5)

    # ---------------------------------------------------------------- 3 backup

    async def can_back_up(ctx: PlanContext) -> Check:
        if path.exists():
            return Check.failed(f"{path} already exists; choose another --backup file")
        parent = next((p for p in [path.parent, *path.parents] if p.exists()), None)
        if parent is None or not parent.is_dir():
            return Check.failed(f"cannot create {path.parent}")
        if ctx.previewing:
            queue = await ctx.queue()
            stats = await queue.stats()
            return Check.passed(
                f"{path} is free; the queue holds {stats['total_length']} stream "
                f"entries and {stats['total_delayed']} delayed retries now"
            )
        return await consumers_stopped(ctx)

    async def do_backup(ctx: PlanContext) -> Outcome:
        queue = await ctx.queue()
        result = await backup.backup(queue, path, include_delayed=True)
        ctx.facts["backup"] = result
        ctx.resume["--backup"] = str(path)
        return Outcome(
            f"{result.count} entries written to {path} (sha256 {result.sha256[:12]})",
            detail=result.summary(),
        )

    async def backup_verified(ctx: PlanContext) -> Check:
        written = ctx.facts["backup"]
        read = backup.verify(path)
        if (read.count, read.sha256) != (written.count, written.sha256):
            return Check.failed(
                f"read back {read.count} entries / {read.sha256[:12]}, "
                f"wrote {written.count} / {written.sha256[:12]}"
            )
        return Check.passed(f"read back {read.count} entries, checksum matches")

    # ---------------------------------------------------------------- 4 clear

    async def verified_file(ctx: PlanContext) -> Check:
        if not path.exists():
            if ctx.previewing:
                return Check.later(f"{path} is written and verified by step 3")
            return Check.failed(
                f"no backup at {path}: nothing is cleared without a verified backup"
            )
        read = backup.verify(path)  # BackupError (count or checksum) fails the precondition
        if ctx.previewing:
            return Check.passed(f"{path} verifies ({read.count} entries)")
        stopped = await consumers_stopped(ctx)
        if not stopped.ok:
            return stopped
        return Check.passed(f"{path} verifies ({read.count} entries); {stopped.message}")

    async def clear(ctx: PlanContext) -> Outcome:
        held = _held(path)
        queue = await ctx.queue()
        removed = await backup.clear_backed_up(queue, held)
        ctx.resume["--backup"] = str(path)
        return Outcome(
            f"removed {removed} of the {held.count} backed-up entries",
            detail={"removed": removed, "backup": str(path), "by_key": held.by_key},
        )

    async def cleared(ctx: PlanContext) -> Check:
        held = _held(path)
        queue = await ctx.queue()
        left = await _still_there(queue.redis, held)
        if left:
            return Check.failed(f"{left} backed-up entries are still in Redis")
        depth = await queue.depth()
        return Check.passed(
            f"none of the {held.count} backed-up entries is left; depth now "
            + ", ".join(f"{q} {n}" for q, n in depth.items())
        )

    # ---------------------------------------------------------------- 5 scale back

    async def know_target(ctx: PlanContext) -> Check:
        n = target(ctx)
        if n is None:
            if ctx.previewing:
                return Check.later("the count read in step 1")
            return Check.failed("the previous replica count is unknown: pass --replicas N")
        if n == 0 and opts.replicas is None:
            # Already at 0 before the plan (an earlier run stopped half way?): scaling
            # "back" to 0 would leave the workers down.
            return Check.failed("the deployment was at 0 replicas already: pass --replicas N")
        return Check.passed(f"scale back to {n}")

    async def scale_up(ctx: PlanContext) -> Outcome:
        n = int(target(ctx))  # type: ignore[arg-type]
        await ctx.kube.scale(n)
        state = await ctx.kube.wait_replicas(n, opts.timeout)
        return Outcome(f"{state.ready}/{n} replicas ready")

    async def at_target(ctx: PlanContext) -> Check:
        n = int(target(ctx))  # type: ignore[arg-type]
        state = await ctx.kube.deployment_state()
        return Check(state.scaled_to(n), state.describe())

    # ---------------------------------------------------------------- 6 watch

    async def watch(ctx: PlanContext) -> Outcome:
        if opts.watch_seconds <= 0:
            return Outcome("not watched (--watch-seconds 0)", status="skipped")
        queue = await ctx.queue()
        samples = []
        t0 = time.monotonic()
        interval = max(0.2, min(5.0, opts.watch_seconds / 12))
        while True:
            depth = await queue.depth()
            stats = await queue.stats()
            sample = {
                "t": round(time.monotonic() - t0, 1),
                "depth": sum(depth.values()),
                "pending": stats["total_pending"],
                "delayed": stats["total_delayed"],
                "consumers": sum(len(q["consumers"]) for q in stats["queues"].values()),
            }
            samples.append(sample)
            ctx.reporter.watch("queue depth", sample)
            if sample["t"] >= opts.watch_seconds:
                break
            await asyncio.sleep(min(interval, max(0.0, opts.watch_seconds - sample["t"])))
        ctx.reporter.watch("queue depth", None)
        first, last = samples[0]["depth"], samples[-1]["depth"]
        status = "warning" if last > first else "ok"
        trend = "fell" if last < first else "grew" if last > first else "stayed"
        return Outcome(
            f"depth {trend}: {first} -> {last} over {samples[-1]['t']:g}s",
            status,
            {"samples": samples},
        )

    def after(ctx: PlanContext) -> list[str]:
        return [
            f"ms07 queue restore {path}   # puts the backed-up entries back when the workers can "
            "take them"
        ]

    ns = kubectl
    return Plan(
        name="queue-full",
        summary="Back up the whole queue, clear exactly what was backed up, restart the workers.",
        cli="ms07 recover queue-full",
        args=list(args or []),
        after=after,
        steps=[
            Step(
                "Scale the deployment to 0 replicas",
                lambda c: (
                    f"kubectl scale deployment/{c.kube.deployment} --replicas=0 {ns(c)} && "
                    f"kubectl wait --for=delete pod -l {c.kube.selector} {ns(c)} "
                    f"--timeout={opts.timeout:g}s"
                ),
                scale_down,
                cluster_reachable,
                at_zero,
                if_interrupted=(
                    "the deployment may be scaling down (kubectl get deployment shows where)"
                ),
            ),
            Step(
                "Wait until no consumer is active (heartbeats gone, consumers idle)",
                f"redis-cli --scan --pattern '{keys.HEARTBEAT_PATTERN}'   # until empty; and "
                + "; ".join(f"redis-cli XINFO CONSUMERS {s} {keys.GROUP}" for s in streams),
                wait_idle,
                redis_reachable,
                consumers_stopped,
                changes=False,
                if_interrupted="nothing was changed by this step",
            ),
            Step(
                "Back up every stream entry and delayed retry, verified by reading it back",
                f"ms07 queue backup {path}   # = redis-cli XRANGE <stream> - + and ZRANGE "
                "<delayed> 0 -1 "
                f"WITHSCORES for {', '.join(streams + delayed)}, every entry with its fields",
                do_backup,
                can_back_up,
                backup_verified,
                if_interrupted=f"the queue is untouched; {path}.partial may be left (delete it)",
            ),
            Step(
                "Remove exactly the backed-up entries from Redis",
                "; ".join(
                    f"redis-cli XACK {s} {keys.GROUP} <ids in the backup>; redis-cli XDEL {s} "
                    "<ids in the backup>"
                    for s in streams
                )
                + "; "
                + "; ".join(f"redis-cli ZREM {d} <members in the backup>" for d in delayed),
                clear,
                verified_file,
                cleared,
                if_interrupted=(
                    f"some backed-up entries may be removed, the rest not; all are in {path}"
                ),
            ),
            Step(
                "Scale the deployment back",
                lambda c: (
                    f"kubectl scale deployment/{c.kube.deployment} "
                    f"--replicas={target(c) if target(c) is not None else '<previous>'} "
                    f"{ns(c)} && kubectl rollout status deployment/{c.kube.deployment} {ns(c)}"
                ),
                scale_up,
                know_target,
                at_target,
                if_interrupted=(
                    "the deployment may be scaling up (kubectl get deployment shows where)"
                ),
            ),
            Step(
                "Watch the queue depth fall",
                "watch -n 5 " + " ".join(f"'redis-cli XLEN {s}'" for s in streams),
                watch,
                changes=False,
                if_interrupted="nothing was changed by this step",
            ),
        ],
    )


def _held(path: Path) -> backup.BackupResult:
    """What a verified backup file holds, in the shape clear_backed_up takes."""
    read = backup.verify(path)
    held = backup.BackupResult(path, read.count, read.sha256)
    for obj in read.entries:
        if obj["t"] == "stream":
            held.stream_ids.setdefault(obj["key"], []).append(obj["id"])
        else:
            held.delayed_members.setdefault(obj["key"], []).append(obj["member"])
        held.by_key[obj["key"]] = held.by_key.get(obj["key"], 0) + 1
    return held


async def _still_there(redis: object, held: backup.BackupResult) -> int:
    left = 0
    for stream, ids in held.stream_ids.items():
        for start in range(0, len(ids), PROBE_CHUNK):
            pipe = redis.pipeline(transaction=False)  # type: ignore[attr-defined]
            for i in ids[start : start + PROBE_CHUNK]:
                pipe.xrange(stream, min=i, max=i, count=1)
            left += sum(1 for rows in await pipe.execute() if rows)
    for dkey, members in held.delayed_members.items():
        for start in range(0, len(members), PROBE_CHUNK):
            scores = await redis.zmscore(dkey, members[start : start + PROBE_CHUNK])  # type: ignore[attr-defined]
            left += sum(1 for s in scores if s is not None)
    return left
