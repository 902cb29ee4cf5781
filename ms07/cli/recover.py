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
from typing import Any

import typer

from ms07.cli import common
from ms07.errors import UsageError
from ms07.options import fields_from, typer_command
from ms07.recover.procedures import PROCEDURES, KubeOptions, Procedure, RunOptions

app = typer.Typer(
    help="Recovery procedures as reviewed, verified, audited plans.", no_args_is_help=True
)


def _command(proc: Procedure) -> Callable[..., None]:
    """``ms07 recover <name>``, generated from the procedure's ``Options`` (and the shared
    ``RunOptions``/``KubeOptions``), in the order :meth:`Procedure.specs` gives."""

    def body(ctx: typer.Context, **values: Any) -> None:
        opts = proc.make(**fields_from(proc.options, values))
        run = RunOptions(**fields_from(RunOptions, values))
        kube = KubeOptions(**fields_from(KubeOptions, values)) if proc.cluster else None
        _drive(ctx, proc, opts, run, kube)

    return typer_command(proc.specs(), body, name=proc.name, help=proc.help)


def _drive(
    ctx: typer.Context, proc: Procedure, opts: Any, run: RunOptions, kube: KubeOptions | None
) -> None:
    """Preview -> settle (dry run, blocked, confirm) -> execute, each phase in its own event
    loop so that Ctrl-C at the prompt is a plain No and Ctrl-C during a step is described."""
    from ms07.cli import recover_render as render
    from ms07.recover import plan as P

    st = common.state(ctx)
    if run.as_json and not (run.dry_run or run.yes):
        raise UsageError("--json needs --dry-run or --yes: there is no prompt in JSON mode")
    plan = proc.build(st.settings, opts, kube)
    if run.from_step > len(plan.steps):
        raise UsageError(f"--from-step: this plan has {len(plan.steps)} steps")
    console = st.console
    reporter = P.Reporter() if run.as_json else render.RichReporter(console, len(plan.steps))
    live: list[Any] = []
    kube_options = kube.overrides() if kube is not None else {}

    async def phase(dry: bool, fn: Callable[[Any], Any]) -> Any:
        async with P.PlanContext(
            st.settings, kube_options=kube_options, reporter=reporter, dry_run=dry
        ) as pctx:
            pctx.plan_id = run.plan_id or ""
            live.append(pctx)
            return await fn(pctx)

    def ask(shown: P.PlanResult) -> bool:
        from rich.prompt import Confirm

        try:
            return Confirm.ask(
                f"Run these {len(plan.steps) - run.from_step + 1} steps?",
                default=False,
                console=console,
            )
        except (EOFError, KeyboardInterrupt):
            return False

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
    stop = P.settle(shown, dry_run=run.dry_run, yes=run.yes, confirm=ask)
    if stop is not None:
        _stopped(st, stop)
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
        render.summary(st.console, result)
    raise typer.Exit(result.exit_code)


def _stopped(st: Any, stop: Any) -> None:
    """Say why the plan did not run (blocked, dry run, not confirmed) and exit."""
    if stop.status == "blocked":
        from rich.text import Text

        st.err.print(Text.assemble(("not run: ", "bold red"), stop.message))
        for hint in stop.next_steps:
            st.err.print(Text(f"next: {hint}"), overflow="fold")
    elif stop.status == "dry-run":
        st.console.print("dry run: nothing was changed.")
    else:
        st.console.print(f"{stop.message}.")
    raise typer.Exit(stop.exit_code)


for _proc in PROCEDURES.values():
    app.command(_proc.name)(_command(_proc))
