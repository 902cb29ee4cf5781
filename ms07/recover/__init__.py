"""The guide's recovery procedures (docs/architecture.md) as plans: reviewable, verified, audited, resumable.

For runbooks and other callers::

    from ms07 import recover
    result = await recover.run("queue-full", settings, dry_run=True)
    result = await recover.run("scale", settings, yes=True, replicas=5)
    result.status, result.to_dict()

``run`` needs ``dry_run=True`` or ``yes=True`` (there is nobody to ask). Procedures and
their options are the ``Options`` dataclasses of the registry ``PROCEDURES``
(:mod:`ms07.recover.procedures`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ms07.errors import UsageError
from ms07.recover.procedures import PROCEDURES, KubeOptions, RunOptions, procedure

if TYPE_CHECKING:
    from ms07.config import Settings
    from ms07.recover.plan import Confirm, Plan, PlanResult, Reporter

__all__ = ["PROCEDURES", "KubeOptions", "RunOptions", "build", "procedure", "run", "run_plan"]


def build(name: str, settings: Settings, **options: Any) -> Plan:
    """The plan of procedure ``name`` with these options (its ``Options`` fields)."""
    proc = procedure(name)
    return proc.build(settings, proc.make(**options))


async def run_plan(
    plan: Plan,
    settings: Settings,
    run: RunOptions,
    *,
    kube: KubeOptions | None = None,
    reporter: Reporter | None = None,
    confirm: Confirm | None = None,
) -> PlanResult:
    """Preview, settle, execute in one event loop (the CLI splits the same phases over two,
    see :func:`ms07.recover.plan.settle`)."""
    from ms07.recover.plan import PlanContext
    from ms07.recover.plan import run as run_phases

    kube_options = kube.overrides() if kube is not None else {}
    async with PlanContext(
        settings, kube_options=kube_options, reporter=reporter, dry_run=run.dry_run
    ) as ctx:
        ctx.plan_id = run.plan_id or ""
        return await run_phases(
            plan, ctx, dry_run=run.dry_run, yes=run.yes, confirm=confirm,
            from_step=run.from_step, plan_id=run.plan_id,
        )


async def run(
    name: str,
    settings: Settings,
    *,
    dry_run: bool = False,
    yes: bool = False,
    from_step: int = 1,
    plan_id: str | None = None,
    reporter: Reporter | None = None,
    kube_options: dict[str, Any] | None = None,
    **options: Any,
) -> PlanResult:
    """Build and run a procedure unattended; returns the structured :class:`PlanResult`."""
    if not (dry_run or yes):
        raise UsageError(f"recover {name}: pass dry_run=True or yes=True (nobody can be asked)")
    plan = build(name, settings, **options)
    return await run_plan(
        plan, settings, RunOptions(dry_run, yes, from_step, plan_id),
        kube=KubeOptions(**(kube_options or {})), reporter=reporter,
    )
