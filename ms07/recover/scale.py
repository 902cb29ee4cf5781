"""``recover scale``: the guide's "scale workers horizontally" (docs/architecture.md, "Guide procedures") as a plan.

Current -> N replicas through the scale subresource, a wait until N pods are Ready, then
a watch of the consumer group until N consumers are active (heartbeats). Where no engine
can run (a test cluster, engines that cannot reach Redis) the watch ends after its
timeout as a warning that says so, not a failure: the scaling itself was verified.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from ms07 import keys
from ms07.config import Settings
from ms07.options import opt
from ms07.recover import consumers, procedures
from ms07.recover.plan import Check, Outcome, Plan, PlanContext, Step


@dataclass
class Options:
    replicas: int = opt("--replicas", "The replica count to reach.", min=0)
    consumers_timeout: float = opt(
        "--consumers-timeout", "Wait this long for consumers (0: skip).", default=60.0, min=0
    )
    timeout: float = procedures.timeout()
    idle_seconds: float = 5.0


def build(settings: Settings, opts: Options, args: list[str] | None = None) -> Plan:
    streams = [keys.stream(q) for q in settings.distribution.priorities]
    n = opts.replicas

    async def readable(ctx: PlanContext) -> Check:
        spec, current = await ctx.kube.get_scale()
        ctx.facts["previous_replicas"] = spec
        return Check.passed(f"{ctx.kube.target}: {spec} -> {n} replicas ({current} running now)")

    async def do_scale(ctx: PlanContext) -> Outcome:
        spec, _ = await ctx.kube.get_scale()
        ctx.facts["previous_replicas"] = spec
        if spec != n:
            await ctx.kube.scale(n)
        state = await ctx.kube.wait_replicas(n, opts.timeout)
        return Outcome(
            f"{spec} -> {n} replicas, {state.ready} Ready", detail={"previous_replicas": spec}
        )

    async def scaled(ctx: PlanContext) -> Check:
        state = await ctx.kube.deployment_state()
        return Check(state.scaled_to(n), state.describe())

    async def join(ctx: PlanContext) -> Outcome:
        if opts.consumers_timeout <= 0:
            return Outcome("not watched (--consumers-timeout 0)", "skipped")
        queue = await ctx.queue()
        growing = n >= ctx.facts.get("previous_replicas", 0)
        deadline = time.monotonic() + opts.consumers_timeout
        counts: list[int] = []
        while True:
            act = await consumers.activity(
                queue.redis, queue.priorities, int(opts.idle_seconds * 1000)
            )
            active = len(act.live_names())
            if not counts or counts[-1] != active:
                counts.append(active)
                ctx.reporter.info(f"active consumers: {active} of {n}")
            if (active >= n) if growing else (active <= n):
                return Outcome(
                    f"{active} consumer(s) active in group {keys.GROUP} "
                    f"({' -> '.join(map(str, counts))})",
                    detail={"counts": counts, **act.as_dict()},
                )
            if time.monotonic() >= deadline:
                return Outcome(
                    f"{active} of {n} consumers active after {opts.consumers_timeout:g}s: the "
                    "pods are "
                    "Ready but their engines have not joined the group (no engine running, or it "
                    "cannot reach Redis: kubectl logs)",
                    "warning",
                    {"counts": counts, **act.as_dict()},
                )
            await asyncio.sleep(0.5)

    def ns(c: PlanContext) -> str:
        return f"deployment/{c.kube.deployment} -n {c.kube.namespace}"

    return Plan(
        name="scale",
        summary=f"Scale the workers to {n} replicas and watch them join the consumer group.",
        cli="ms07 recover scale",
        args=list(args or []),
        steps=[
            Step(
                f"Scale the deployment to {n} replicas and wait until they are Ready",
                lambda c: (
                    f"kubectl scale {ns(c)} --replicas={n} && kubectl rollout status {ns(c)} "
                    f"--timeout={opts.timeout:g}s"
                ),
                do_scale,
                readable,
                scaled,
                if_interrupted="the deployment may be scaling (kubectl get deployment shows where)",
            ),
            Step(
                "Watch the consumers join the group",
                "; ".join(f"redis-cli XINFO CONSUMERS {s} {keys.GROUP}" for s in streams)
                + f"   # until {n} are active",
                join,
                changes=False,
                if_interrupted="nothing was changed",
            ),
        ],
    )
