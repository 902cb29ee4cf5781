"""``recover requeue-from-db``: PostgreSQL is the system of record; Redis gets back what it lost.

Every job PostgreSQL holds as queued, retrying or processing, untouched for
``older_than`` seconds (a grace for a submit between its INSERT and its XADD), that no
queue stream or delayed set holds, is enqueued again — the same repair the engine's
reconciler runs (:mod:`ms07.reconcile`, with its race guard). Delivery is at least once with
an ``Idempotency-Key``, so a job that was in fact still in flight is deduplicated by its
receiver.
"""

from __future__ import annotations

from dataclasses import dataclass

from ms07 import keys
from ms07.config import Settings
from ms07.options import opt
from ms07.recover.plan import Check, Outcome, Plan, PlanContext, Step
from ms07.store.status import OPEN_SQL

LIMIT = 100_000
SHOWN = 20


@dataclass
class Options:
    older_than: float = opt(
        "--older-than", "Only jobs untouched this many seconds (grace).", default=30.0, min=0
    )


def build(settings: Settings, opts: Options, args: list[str] | None = None) -> Plan:
    # Here, not at the top: the CLI imports this module for its Options, and `ms07 --help`
    # must not load psycopg (tests/diagnose/test_all.py).
    from ms07 import reconcile

    priorities = settings.distribution.priorities

    async def lost_jobs(ctx: PlanContext) -> reconcile.Scan:
        return await reconcile.find_lost(ctx.runtime.connection, ctx.queue, opts.older_than, LIMIT)

    async def reachable(ctx: PlanContext) -> Check:
        scan = await lost_jobs(ctx)
        return Check.passed(
            f"{scan.scanned} open job(s) older than {opts.older_than:g}s; {len(scan.lost)} not in Redis now"
        )

    async def find(ctx: PlanContext) -> Outcome:
        scan = await lost_jobs(ctx)
        total, lost = scan.scanned, scan.lost
        ctx.facts["lost"] = [j.distribution_id for j in lost]
        if lost:
            ctx.reporter.table(
                f"jobs Redis lost (first {min(SHOWN, len(lost))} of {len(lost)})",
                ["distribution_id", "destination", "priority", "status"],
                [[j.distribution_id, j.destination_name, j.priority, j.status] for j in lost[:SHOWN]],
            )
        return Outcome(
            f"{total} open job(s) older than {opts.older_than:g}s; {len(lost)} missing from Redis",
            detail={"open": total, "lost": len(lost), "ids": ctx.facts["lost"][:1000]},
        )

    async def requeue(ctx: PlanContext) -> Outcome:
        if "lost" not in ctx.facts:
            await find(ctx)
        if not ctx.facts["lost"]:
            return Outcome("nothing to enqueue", "skipped")
        queue = await ctx.queue()
        count = await reconcile.requeue_lost(
            ctx.runtime.connection,
            queue,
            opts.older_than,
            limit=max(5000, len(ctx.facts["lost"]) * 2),
        )
        await queue.ensure_groups()
        return Outcome(f"enqueued {count} job(s) again", detail={"enqueued": count})

    async def back_in_redis(ctx: PlanContext) -> Check:
        queue = await ctx.queue()
        wanted = ctx.facts["lost"]
        present = await queue.contains(wanted)
        missing = [i for i in wanted if i not in present]
        if missing:
            return Check.failed(f"{len(missing)} job(s) still not in Redis, e.g. {missing[0]}")
        return Check.passed(f"all {len(wanted)} are in a queue stream again")

    return Plan(
        name="requeue-from-db",
        summary="Enqueue again the open jobs PostgreSQL holds and Redis lost.",
        cli="ms07 recover requeue-from-db",
        args=list(args or []),
        steps=[
            Step(
                "Find the open jobs PostgreSQL holds that no queue stream or delayed set holds",
                # The reviewer's equivalent psql line, shown, never executed (older_than is a
                # float option): ms07 runs its own parameterised query.
                'psql "$MS07_DATABASE_URL" -c "SELECT distribution_id, destination_name, '  # nosec B608
                "priority, status "
                f"FROM distribution_jobs WHERE status IN {OPEN_SQL} AND "
                f"updated_at < now() - interval '{opts.older_than:g} seconds'\"   # then each id: "
                + "; ".join(
                    f"redis-cli ZSCORE {keys.delayed(q)} <id>; redis-cli XRANGE {keys.stream(q)} "
                    "- +"
                    for q in priorities
                ),
                find,
                reachable,
                changes=False,
                if_interrupted="nothing was changed",
            ),
            Step(
                "Enqueue them again",
                f"redis-cli XADD {keys.stream('<priority>')} '*' id <distribution_id> destination "
                "<destination>   # for each lost job, its updated_at touched",
                requeue,
                None,
                back_in_redis,
                if_interrupted=(
                    "some jobs may be enqueued, others not; running the plan again enqueues only "
                    "what is still missing"
                ),
            ),
        ],
    )
