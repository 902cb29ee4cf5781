"""``recover worker-crash``: the guide's "Recovery da Worker Crash" (docs/architecture.md, "Guide procedures").

The deployment's pods with status, restarts and last termination (OOMKilled, Error, exit
code) and their memory when metrics.k8s.io answers -> the previous container's log of
each crashed pod (JSON lines made readable) -> delete it and wait for a Ready replacement
-> the replacement's first log lines. One pod at a time, so the deployment never loses
more than one worker to the procedure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ms07.config import Settings
from ms07.kube.client import KubeNotFound, PodInfo
from ms07.options import opt
from ms07.recover import procedures
from ms07.recover.plan import Check, Outcome, Plan, PlanContext, Step

LOG_BYTES = 256 * 1024
# Without Kubernetes the engine is a process (maybe a systemd unit): these work there.
OUTSIDE_CLUSTER = [
    "ms07 health   # is an engine answering? (MS07_HEALTH_URL, else 127.0.0.1:service.http_port)",
    "ms07 diagnose queue   # whether any worker is alive, and what the dead ones still hold",
    "systemctl status ms07; journalctl -u ms07 -n 50   # under systemd: why it stopped; "
    "then systemctl restart ms07",
    "ms07 run   # not under systemd: start the engine again; the last lines of the old one's "
    "log say why it died",
    "ms07 recover reclaim-pending --dry-run   # a new engine takes a dead worker's entries over "
    "by itself after claim_idle_seconds; this does it now",
]


@dataclass
class Options:
    pods: list[str] = opt(  # default: every crashed pod
        "--pod", "Pod to replace (repeatable; default: every crashed pod).", factory=list
    )
    lines: int = opt(
        "--lines", "Previous-log lines to show per pod.", default=50, min=1, max=5000
    )
    timeout: float = procedures.timeout()
    first_lines: int = 20


def readable(line: str) -> str:
    """A JSON log line of the engine as one readable line; any other text as it is."""
    try:
        rec = json.loads(line)
    except ValueError:
        return line
    if not isinstance(rec, dict):
        return line
    head = " ".join(str(rec[k]) for k in ("timestamp", "level", "component") if rec.get(k))
    text = f"{head} {rec.get('message', '')}".strip()
    ids = " ".join(
        f"{k}={rec[k]}" for k in ("distribution_id", "destination", "error_code") if rec.get(k)
    )
    if ids:
        text += f" ({ids})"
    meta = rec.get("metadata")
    if isinstance(meta, dict) and meta:
        text += " " + " ".join(f"{k}={v}" for k, v in meta.items())
    if rec.get("stack_trace"):
        text += " | " + " | ".join(str(rec["stack_trace"]).rstrip().splitlines()[-2:])
    return text


def _describe(p: PodInfo) -> str:
    last = (
        f", last {p.last_reason} exit {p.last_exit_code}"
        if p.last_reason or p.last_exit_code is not None
        else ""
    )
    return f"{p.name} ({p.status}{last}, {p.restarts} restarts)"


def build(settings: Settings, opts: Options, args: list[str] | None = None) -> Plan:
    def ns(c: PlanContext) -> str:
        return f"-n {c.kube.namespace}"

    async def targets(ctx: PlanContext, pods: list[PodInfo] | None = None) -> list[str]:
        if "targets" not in ctx.facts:
            if opts.pods:
                ctx.facts["targets"] = list(opts.pods)
            else:
                pods = pods if pods is not None else await ctx.kube.pods()
                ctx.facts["targets"] = [p.name for p in pods if p.crashed]
        return list(ctx.facts["targets"])

    def shown(ctx: PlanContext) -> list[str]:
        return ctx.facts.get("targets") or ["<crashed-pod>"]

    # ---------------------------------------------------------------- 1 list

    async def listable(ctx: PlanContext) -> Check:
        pods = await ctx.kube.pods()
        missing = [n for n in opts.pods if n not in {p.name for p in pods}]
        if missing:
            return Check.failed(f"no pod {', '.join(missing)} with label {ctx.kube.selector}")
        names = await targets(ctx, pods)
        crashed = [_describe(p) for p in pods if p.name in names]
        return Check.passed(f"{len(pods)} pods; to replace: {'; '.join(crashed) or 'none'}")

    async def list_pods(ctx: PlanContext) -> Outcome:
        pods = await ctx.kube.pods()
        metrics = await ctx.kube.pod_metrics()
        usage = {m["pod"]: m["containers"] for m in metrics or []}

        def mem(name: str) -> str:
            return ", ".join(str(u.get("memory", "")) for u in usage.get(name, {}).values()) or "-"

        ctx.reporter.table(
            f"pods of {ctx.kube.target} ({ctx.kube.selector})",
            [
                "pod",
                "status",
                "ready",
                "restarts",
                "last termination",
                "exit code",
                "finished",
                "memory",
            ],
            [
                [
                    p.name,
                    p.status,
                    "yes" if p.ready else "no",
                    p.restarts,
                    p.last_reason or "-",
                    p.last_exit_code if p.last_exit_code is not None else "-",
                    p.last_finished_at or "-",
                    mem(p.name),
                ]
                for p in pods
            ],
        )
        if metrics is None:
            ctx.reporter.info("pod memory: metrics.k8s.io is not available in this cluster")
        ctx.facts.pop("targets", None)
        names = await targets(ctx, pods)
        if not opts.pods and names:
            ctx.resume["--pod"] = names
        chosen = [_describe(p) for p in pods if p.name in names]
        detail = {"pods": [p.as_dict() for p in pods], "metrics": metrics}
        if not names:
            return Outcome(f"{len(pods)} pods, none crashed: nothing to replace", detail=detail)
        return Outcome(f"{len(pods)} pods; to replace: {'; '.join(chosen)}", detail=detail)

    # ---------------------------------------------------------------- 2 previous logs

    async def previous_logs(ctx: PlanContext) -> Outcome:
        names = await targets(ctx)
        if not names:
            return Outcome("no crashed pod", "skipped")
        logs: dict[str, list[str]] = {}
        for name in names:
            text = await ctx.kube.pod_log(name, previous=True, tail=opts.lines)
            title = f"{name}: last {opts.lines} lines of the previous (crashed) container"
            if text is None:
                text = await ctx.kube.pod_log(name, tail=opts.lines) or ""
                title = f"{name}: no previous container; last {opts.lines} lines of the current one"
            logs[name] = [readable(line) for line in text.splitlines()]
            ctx.reporter.lines(title, logs[name])
        return Outcome(f"read the logs of {len(names)} pod(s)", detail={"logs": logs})

    # ---------------------------------------------------------------- 3 delete, wait

    async def replace(ctx: PlanContext) -> Outcome:
        names = await targets(ctx)
        if not names:
            return Outcome("no crashed pod", "skipped")
        done: dict[str, str] = ctx.facts.setdefault("replacements", {})
        for name in names:
            before = {p.name for p in await ctx.kube.pods()}
            try:
                await ctx.kube.delete_pod(name)
            except KubeNotFound:
                # Gone already (e.g. deleted before a resume): wait for the deployment instead.
                spec, _ = await ctx.kube.get_scale()
                await ctx.kube.wait_replicas(spec, opts.timeout)
                ctx.reporter.info(f"{name} was already gone; the deployment has {spec} Ready pods")
                continue
            new = await ctx.kube.wait_replacement(name, before, opts.timeout)
            done[name] = new.name
            ctx.reporter.info(f"{name} deleted; {new.name} is Ready")
        return Outcome(
            "; ".join(f"{old} -> {new} Ready" for old, new in done.items()) or "nothing deleted",
            detail={"replacements": done},
        )

    async def replaced(ctx: PlanContext) -> Check:
        pods = {p.name: p for p in await ctx.kube.pods()}
        names = await targets(ctx)
        lingering = [n for n in names if n in pods and not pods[n].deleting]
        if lingering:
            return Check.failed(f"still running: {', '.join(lingering)}")
        done = ctx.facts.get("replacements", {})
        bad = [n for n in done.values() if n not in pods or not pods[n].ready]
        if bad:
            return Check.failed(f"replacement not Ready: {', '.join(bad)}")
        return Check.passed(f"{len(done)} replacement(s) Ready")

    # ---------------------------------------------------------------- 4 first lines

    async def first_lines(ctx: PlanContext) -> Outcome:
        done: dict[str, str] = ctx.facts.get("replacements", {})
        if not done:
            return Outcome("no new pod to show", "skipped")
        logs: dict[str, list[str]] = {}
        for new in done.values():
            text = await ctx.kube.pod_log(new, limit_bytes=LOG_BYTES) or ""
            logs[new] = [readable(line) for line in text.splitlines()[: opts.first_lines]]
            ctx.reporter.lines(f"{new}: first {opts.first_lines} log lines", logs[new])
        return Outcome(
            f"showed the first log lines of {len(logs)} new pod(s)", detail={"logs": logs}
        )

    async def still_up(ctx: PlanContext) -> Check:
        pods = {p.name: p for p in await ctx.kube.pods()}
        restarted = [
            n
            for n in ctx.facts.get("replacements", {}).values()
            if n not in pods or pods[n].restarts or not pods[n].ready
        ]
        if restarted:
            return Check.failed(
                f"new pod(s) not Ready or already restarting: {', '.join(restarted)}"
            )
        return Check.passed("the new pods are Ready with 0 restarts")

    def first_cmd(c: PlanContext) -> str:
        new = list(c.facts.get("replacements", {}).values()) or ["<new-pod>"]
        return "; ".join(f"kubectl logs {n} {ns(c)} | head -{opts.first_lines}" for n in new)

    return Plan(
        name="worker-crash",
        summary="Find crashed worker pods, read why they died, replace them one by one.",
        cli="ms07 recover worker-crash",
        args=list(args or []),
        outside_cluster=OUTSIDE_CLUSTER,
        steps=[
            Step(
                "List the deployment's pods with status, restarts and last termination",
                lambda c: (
                    f"kubectl get pods -l {c.kube.selector} {ns(c)} -o wide && "
                    f"kubectl top pods -l {c.kube.selector} {ns(c)}"
                ),
                list_pods,
                listable,
                changes=False,
                if_interrupted="nothing was changed",
                needs_cluster=True,
            ),
            Step(
                "Read the previous (crashed) container's logs",
                lambda c: "; ".join(
                    f"kubectl logs {p} --previous --tail={opts.lines} {ns(c)}" for p in shown(c)
                ),
                previous_logs,
                changes=False,
                if_interrupted="nothing was changed",
                needs_cluster=True,
            ),
            Step(
                "Delete each crashed pod and wait for its replacement to be Ready",
                lambda c: (
                    "; ".join(f"kubectl delete pod {p} {ns(c)}" for p in shown(c))
                    + f" && kubectl wait --for=condition=Ready pod -l {c.kube.selector} {ns(c)} "
                    f"--timeout={opts.timeout:g}s"
                ),
                replace,
                None,
                replaced,
                if_interrupted=(
                    "a pod may be deleted with its replacement not Ready yet; the Deployment "
                    "controller still creates it (kubectl get pods shows it)"
                ),
                needs_cluster=True,
            ),
            Step(
                "Show the first log lines of each new pod",
                first_cmd,
                first_lines,
                None,
                still_up,
                changes=False,
                if_interrupted="nothing was changed",
                needs_cluster=True,
            ),
        ],
    )
