"""``ms07 recover``: the guide's recovery procedures (docs/architecture.md) as reviewed, verified, audited plans.

Every command prints its plan (each step with the kubectl / redis-cli / psql line it
stands for and its precondition checked), then asks once (default No) unless ``--yes``,
then runs the steps, verifying and auditing each. ``--dry-run`` stops after the plan and
changes nothing. A failed step stops the plan and prints the command that resumes it.
Exit codes: 0 done (or dry run clean), 1 failed / blocked / not confirmed, 2 bad usage,
130 interrupted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from ms07.cli import common
from ms07.errors import UsageError

app = typer.Typer(
    help="Recovery procedures as reviewed, verified, audited plans.", no_args_is_help=True
)

DryRun = Annotated[
    bool, typer.Option("--dry-run", help="Print the plan, check its preconditions; change nothing.")
]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Run without asking (unattended).")]
FromStep = Annotated[
    int, typer.Option("--from-step", min=1, help="Start at step N (the resume command sets it).")
]
PlanId = Annotated[
    str | None,
    typer.Option("--plan-id", help="Continue an earlier run's audit trail (set by the resume)."),
]
Json = Annotated[
    bool, typer.Option("--json", help="Print the result as JSON (needs --dry-run or --yes).")
]
Namespace = Annotated[
    str | None,
    typer.Option("--namespace", "-n", help="Kubernetes namespace \\[env: MS07_K8S_NAMESPACE]"),
]
Deployment = Annotated[
    str | None,
    typer.Option("--deployment", help="Deployment name \\[env: MS07_K8S_DEPLOYMENT]"),
]
Selector = Annotated[
    str | None,
    typer.Option(
        "--selector",
        "-l",
        help="Pod label selector, default app=<deployment> \\[env: MS07_K8S_LABEL_SELECTOR]",
    ),
]
Kubeconfig = Annotated[
    str | None,
    typer.Option(
        "--kubeconfig", help="Default: in-cluster, else ~/.kube/config \\[env: KUBECONFIG]"
    ),
]
KubeContext = Annotated[
    str | None,
    typer.Option("--context", help="kubeconfig context"),
]
Timeout = Annotated[
    float, typer.Option("--timeout", min=1, help="Seconds each Kubernetes wait may take.")
]


@dataclass
class Run:
    """The options every recover command shares, and what a resume must repeat of them."""

    dry_run: bool
    yes: bool
    from_step: int
    plan_id: str | None
    as_json: bool
    args: list[str] = field(default_factory=list)
    kube: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, options: dict[str, Any]) -> Run:
        """From a command's parameters (its ``locals()``)."""
        kube = {
            "namespace": options.get("namespace"),
            "deployment": options.get("deployment"),
            "label_selector": options.get("selector"),
            "kubeconfig": options.get("kubeconfig"),
            "context": options.get("context"),
        }
        args = _args(
            ("--namespace", kube["namespace"], None),
            ("--deployment", kube["deployment"], None),
            ("--selector", kube["label_selector"], None),
            ("--kubeconfig", kube["kubeconfig"], None),
            ("--context", kube["context"], None),
            ("--timeout", options.get("timeout"), 300.0),
        )
        return cls(
            options["dry_run"],
            options["yes"],
            options["from_step"],
            options["plan_id"],
            options["as_json"],
            args,
            {k: v for k, v in kube.items() if v},
        )


def _args(*pairs: tuple[str, Any, Any]) -> list[str]:
    """The options the operator set (value differs from the default), for the resume command."""
    out: list[str] = []
    for name, value, default in pairs:
        for v in value if isinstance(value, list) else [value]:
            if v is True:
                out.append(name)
            elif v is not None and v is not False and v != default:
                out += [name, f"{v:g}" if isinstance(v, float) else str(v)]
    return out


def _drive(ctx: typer.Context, run: Run, build: Callable[[Any, list[str]], Any]) -> None:
    """Preview -> (dry run stops) -> confirm -> execute, each phase in its own event loop so
    that Ctrl-C at the prompt is a plain No and Ctrl-C during a step is described."""
    from ms07.recover import plan as P
    from ms07.recover import render

    st = common.state(ctx)
    if run.as_json and not (run.dry_run or run.yes):
        raise UsageError("--json needs --dry-run or --yes: there is no prompt in JSON mode")
    plan = build(st.settings, run.args)
    if run.from_step > len(plan.steps):
        raise UsageError(f"--from-step: this plan has {len(plan.steps)} steps")
    console = st.console
    reporter = P.Reporter() if run.as_json else render.RichReporter(console, len(plan.steps))
    live: list[Any] = []

    async def phase(dry: bool, fn: Callable[[Any], Any]) -> Any:
        async with P.PlanContext(
            st.settings, kube_options=run.kube, reporter=reporter, dry_run=dry
        ) as pctx:
            pctx.plan_id = run.plan_id or ""
            live.append(pctx)
            return await fn(pctx)

    try:
        shown = asyncio.run(phase(True, lambda c: P.preview(plan, c, from_step=run.from_step)))
    except KeyboardInterrupt:
        st.err.print("interrupted while checking the plan: nothing was done")
        raise typer.Exit(130) from None
    if run.as_json and (run.dry_run or shown.status == "blocked"):
        common.print_json(shown.to_dict())
        raise typer.Exit(shown.exit_code)
    if not run.as_json:
        render.plan_table(console, shown, plan.summary)
    if shown.status == "blocked":
        from rich.text import Text

        st.err.print(Text.assemble(("not run: ", "bold red"), shown.message))
        for hint in shown.next_steps:
            st.err.print(Text(f"next: {hint}"), overflow="fold")
        raise typer.Exit(1)
    if run.dry_run:
        console.print("dry run: nothing was changed.")
        raise typer.Exit(0)
    if not run.yes:
        from rich.prompt import Confirm

        try:
            confirmed = Confirm.ask(
                f"Run these {len(plan.steps) - run.from_step + 1} steps?",
                default=False,
                console=console,
            )
        except (EOFError, KeyboardInterrupt):
            confirmed = False
        if not confirmed:
            console.print("not confirmed: nothing was done.")
            raise typer.Exit(1)
    try:
        result = asyncio.run(
            phase(False, lambda c: P.execute(plan, c, from_step=run.from_step, plan_id=run.plan_id))
        )
    except KeyboardInterrupt:
        if run.as_json and live:
            common.print_json(
                {"plan": plan.name, "plan_id": live[-1].plan_id, "status": "interrupted"}
            )
        raise typer.Exit(130) from None
    if run.as_json:
        common.print_json(result.to_dict())
    else:
        render.summary(console, result)
    raise typer.Exit(result.exit_code)


@app.command("queue-full")
def queue_full(
    ctx: typer.Context,
    replicas: Annotated[
        int | None,
        typer.Option("--replicas", min=0, help="Scale back to N (default: the count before)."),
    ] = None,
    backup: Annotated[
        Path | None,
        typer.Option(
            "--backup", help="Backup file (default: STATE_DIR/backups/queue-<time>.jsonl)."
        ),
    ] = None,
    watch_seconds: Annotated[
        float, typer.Option("--watch-seconds", min=0, help="Watch the depth this long (0: skip).")
    ] = 60.0,
    idle_seconds: Annotated[
        float,
        typer.Option("--idle-seconds", min=0.1, help="Idle this long without heartbeat: stopped."),
    ] = 5.0,
    consumer_timeout: Annotated[
        float, typer.Option("--consumer-timeout", min=1, help="Wait this long for them to stop.")
    ] = 180.0,
    dry_run: DryRun = False,
    yes: Yes = False,
    from_step: FromStep = 1,
    plan_id: PlanId = None,
    as_json: Json = False,
    namespace: Namespace = None,
    deployment: Deployment = None,
    selector: Selector = None,
    kubeconfig: Kubeconfig = None,
    context: KubeContext = None,
    timeout: Timeout = 300.0,
) -> None:
    """Queue full: back up the whole queue, clear exactly what was backed up, scale back.

    Scale to 0 and wait until nothing consumes; back up every stream entry and delayed retry,
    verified; remove exactly those; scale back; watch the depth. `ms07 queue restore FILE`
    puts the backed-up entries back."""
    from ms07.recover import queue_full as proc

    run = Run.of(locals())
    path = str(backup) if backup else None
    opts = proc.Options(replicas, path, watch_seconds, idle_seconds, consumer_timeout, timeout)
    extra = _args(
        ("--replicas", replicas, None),
        ("--backup", path, None),
        ("--watch-seconds", watch_seconds, 60.0),
        ("--idle-seconds", idle_seconds, 5.0),
        ("--consumer-timeout", consumer_timeout, 180.0),
    )
    _drive(ctx, run, lambda s, a: proc.build(s, opts, extra + a))


@app.command("db-connection")
def db_connection(
    ctx: typer.Context,
    health_url: Annotated[
        str | None,
        typer.Option(
            "--health-url",
            help="The engine's base URL or its /health/ready URL \\[env: MS07_HEALTH_URL]",
        ),
    ] = None,
    health_timeout: Annotated[
        float, typer.Option("--health-timeout", min=1, help="How long to wait for healthy.")
    ] = 120.0,
    dry_run: DryRun = False,
    yes: Yes = False,
    from_step: FromStep = 1,
    plan_id: PlanId = None,
    as_json: Json = False,
    namespace: Namespace = None,
    deployment: Deployment = None,
    selector: Selector = None,
    kubeconfig: Kubeconfig = None,
    context: KubeContext = None,
    timeout: Timeout = 300.0,
) -> None:
    """Database connection lost: check PostgreSQL, then restart the pods so they reconnect.

    SELECT 1 timed, which host answered as primary or standby, pg_stat_replication; then a
    rollout restart, a wait for Ready pods and for a healthy /health/ready."""
    from ms07.recover import db_connection as proc

    run = Run.of(locals())
    opts = proc.Options(health_url, health_timeout, timeout)
    extra = _args(("--health-url", health_url, None), ("--health-timeout", health_timeout, 120.0))
    _drive(ctx, run, lambda s, a: proc.build(s, opts, extra + a))


@app.command("worker-crash")
def worker_crash(
    ctx: typer.Context,
    pod: Annotated[
        list[str] | None,
        typer.Option("--pod", help="Pod to replace (repeatable; default: every crashed pod)."),
    ] = None,
    lines: Annotated[
        int, typer.Option("--lines", min=1, max=5000, help="Previous-log lines to show per pod.")
    ] = 50,
    dry_run: DryRun = False,
    yes: Yes = False,
    from_step: FromStep = 1,
    plan_id: PlanId = None,
    as_json: Json = False,
    namespace: Namespace = None,
    deployment: Deployment = None,
    selector: Selector = None,
    kubeconfig: Kubeconfig = None,
    context: KubeContext = None,
    timeout: Timeout = 300.0,
) -> None:
    """Worker crash: read why pods crashed, replace them one by one.

    Pods with status, restarts and last termination; the crashed ones' previous logs; delete
    each and wait for its Ready replacement; the new pods' first log lines."""
    from ms07.recover import worker_crash as proc

    run = Run.of(locals())
    opts = proc.Options(list(pod or []), lines, timeout)
    extra = _args(("--pod", list(pod or []), None), ("--lines", lines, 50))
    _drive(ctx, run, lambda s, a: proc.build(s, opts, extra + a))


@app.command("reclaim-pending")
def reclaim_pending(
    ctx: typer.Context,
    to: Annotated[
        str | None,
        typer.Option(
            "--to", help="Give the entries to this live consumer (default: any live one)."
        ),
    ] = None,
    requeue: Annotated[
        bool, typer.Option("--requeue", help="Back into the stream even if a consumer is live.")
    ] = False,
    min_idle_ms: Annotated[
        int, typer.Option("--min-idle-ms", min=0, help="Leave entries touched more recently.")
    ] = 1000,
    dry_run: DryRun = False,
    yes: Yes = False,
    from_step: FromStep = 1,
    plan_id: PlanId = None,
    as_json: Json = False,
) -> None:
    """Pending entries of dead consumers: take them over, then remove those consumers.

    Consumers without a heartbeat: their pending entries go to a live consumer or back into
    the stream; each dead consumer is removed only while it holds nothing."""
    from ms07.recover import reclaim as proc

    if to and requeue:
        raise UsageError("--to and --requeue exclude each other")
    run = Run.of(locals())
    opts = proc.Options(to, requeue, min_idle_ms)
    extra = _args(
        ("--to", to, None), ("--requeue", requeue, None), ("--min-idle-ms", min_idle_ms, 1000)
    )
    _drive(ctx, run, lambda s, a: proc.build(s, opts, extra + a))


@app.command("requeue-from-db")
def requeue_from_db(
    ctx: typer.Context,
    older_than: Annotated[
        float,
        typer.Option("--older-than", min=0, help="Only jobs untouched this many seconds (grace)."),
    ] = 30.0,
    dry_run: DryRun = False,
    yes: Yes = False,
    from_step: FromStep = 1,
    plan_id: PlanId = None,
    as_json: Json = False,
) -> None:
    """Enqueue again every job PostgreSQL holds as queued/retrying/processing that Redis lost."""
    from ms07.recover import requeue as proc

    run = Run.of(locals())
    opts = proc.Options(older_than)
    extra = _args(("--older-than", older_than, 30.0))
    _drive(ctx, run, lambda s, a: proc.build(s, opts, extra + a))


@app.command("scale")
def scale(
    ctx: typer.Context,
    replicas: Annotated[int, typer.Option("--replicas", min=0, help="The replica count to reach.")],
    consumers_timeout: Annotated[
        float,
        typer.Option("--consumers-timeout", min=0, help="Wait this long for consumers (0: skip)."),
    ] = 60.0,
    dry_run: DryRun = False,
    yes: Yes = False,
    from_step: FromStep = 1,
    plan_id: PlanId = None,
    as_json: Json = False,
    namespace: Namespace = None,
    deployment: Deployment = None,
    selector: Selector = None,
    kubeconfig: Kubeconfig = None,
    context: KubeContext = None,
    timeout: Timeout = 300.0,
) -> None:
    """Scale the workers horizontally: current -> N, wait for Ready, watch consumers join."""
    from ms07.recover import scale as proc

    run = Run.of(locals())
    opts = proc.Options(replicas, consumers_timeout, timeout)
    extra = ["--replicas", str(replicas), *_args(("--consumers-timeout", consumers_timeout, 60.0))]
    _drive(ctx, run, lambda s, a: proc.build(s, opts, extra + a))
