"""The guide's recovery procedures (docs/architecture.md) as plans: reviewable, verified, audited, resumable.

For runbooks and other callers::

    from ms07 import recover
    result = await recover.run("queue-full", settings, dry_run=True)
    result = await recover.run("scale", settings, yes=True, replicas=5)
    result.status, result.to_dict()

``run`` needs ``dry_run=True`` or ``yes=True`` (there is nobody to ask). Procedures and
their options are the ``Options`` dataclasses of the modules named in ``PROCEDURES``.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING, Any

from ms07.errors import UsageError

if TYPE_CHECKING:
    from ms07.config import Settings
    from ms07.recover.plan import Plan, PlanResult, Reporter

PROCEDURES = {
    "queue-full": "queue_full",
    "db-connection": "db_connection",
    "worker-crash": "worker_crash",
    "reclaim-pending": "reclaim",
    "requeue-from-db": "requeue",
    "scale": "scale",
}


def build(name: str, settings: Settings, **options: Any) -> Plan:
    """The plan of procedure ``name`` with these options (as the CLI's, in snake_case)."""
    if name not in PROCEDURES:
        raise UsageError(f"unknown recovery procedure {name!r}; known: {', '.join(PROCEDURES)}")
    module = importlib.import_module(f"ms07.recover.{PROCEDURES[name]}")
    known = {f.name for f in dataclasses.fields(module.Options)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(
            f"recover {name}: unknown option {unknown[0]!r}; known: {', '.join(sorted(known))}"
        )
    try:
        opts = module.Options(**options)
    except TypeError as exc:
        raise UsageError(f"recover {name}: {exc}") from None
    return module.build(settings, opts)


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
    from ms07.recover.plan import PlanContext
    from ms07.recover.plan import run as run_plan

    if not (dry_run or yes):
        raise UsageError(f"recover {name}: pass dry_run=True or yes=True (nobody can be asked)")
    plan = build(name, settings, **options)
    async with PlanContext(
        settings, kube_options=kube_options, reporter=reporter, dry_run=dry_run
    ) as ctx:
        return await run_plan(
            plan, ctx, dry_run=dry_run, yes=yes, from_step=from_step, plan_id=plan_id
        )
