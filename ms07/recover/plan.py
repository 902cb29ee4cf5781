"""Recovery plans: steps a reviewer can read before they run, each checked and audited.

A :class:`Plan` is a list of :class:`Step`: a title, the command a human would type
(kubectl, redis-cli, psql) for the reviewer, a precondition, an action and a
verification. :func:`preview` checks every precondition and acts on nothing (the dry
run); :func:`execute` runs the steps in order and writes each one's start and outcome to
the audit trail; :func:`run` is both, with the confirmation in between, for runbooks.

- A failed precondition, action or verification stops the plan; the result carries the
  command that resumes from that step (``--from-step N``, with what the earlier steps
  learned, e.g. ``--replicas 3 --backup FILE``).
- Cancellation (Ctrl-C) is recorded and described: which steps were done, what the
  interrupted step may have left half done, which steps did not run; then re-raised.
- A dry run writes nothing anywhere: no Redis, no Kubernetes, no audit row, no file.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shlex
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ms07.config import Settings
from ms07.errors import Ms07Error
from ms07.logs import clip
from ms07.recover.model import (
    DONE,
    Action,
    Check,
    Outcome,
    Plan,
    PlanResult,
    Probe,
    Reporter,
    Step,
    StepFailed,
    StepResult,
    Text,
    new_plan_id,
)

if TYPE_CHECKING:
    from ms07.kube.client import Kube
    from ms07.queue import Queue
    from ms07.runtime import Runtime

__all__ = [
    "Action",
    "Check",
    "Confirm",
    "Outcome",
    "Plan",
    "PlanContext",
    "PlanResult",
    "Probe",
    "Reporter",
    "Step",
    "StepFailed",
    "StepResult",
    "execute",
    "new_plan_id",
    "preview",
    "resume_command",
    "run",
    "settle",
]


class PlanContext:
    """What steps share: settings, Redis/PostgreSQL (lazy), the cluster (lazy), the
    reporter, and the facts earlier steps learned."""

    def __init__(
        self,
        settings: Settings,
        *,
        runtime: Runtime | None = None,
        kube: Kube | None = None,
        kube_options: dict[str, Any] | None = None,
        reporter: Reporter | None = None,
        dry_run: bool = False,
    ) -> None:
        self.settings = settings
        self.dry_run = dry_run
        self.previewing = False
        self.reporter = reporter or Reporter()
        self.facts: dict[str, Any] = {}
        self.resume: dict[str, str | list[str]] = {}
        self.plan_id = ""
        self.no_cluster: str | None = None  # why Kubernetes cannot be reached, once known
        self._runtime = runtime
        self._owns_runtime = runtime is None
        self._kube = kube
        self._owns_kube = kube is None
        self._kube_options = kube_options or {}

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            from ms07.runtime import Runtime

            # A dry run must not write, not even a pending migration.
            self._runtime = Runtime(self.settings, migrate=not self.dry_run)
        return self._runtime

    async def queue(self) -> Queue:
        return await self.runtime.queue()

    @property
    def kube(self) -> Kube:
        if self._kube is None:
            from ms07.kube.client import Kube

            self._kube = Kube.from_settings(self.settings, **self._kube_options)
        return self._kube

    async def aclose(self) -> None:
        if self._owns_runtime and self._runtime is not None:
            await self._runtime.aclose()
            self._runtime = None
        if self._owns_kube and self._kube is not None:
            self._kube.close()
            self._kube = None

    async def __aenter__(self) -> PlanContext:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _text(value: Text, ctx: PlanContext) -> str:
    try:
        return value(ctx) if callable(value) else value
    except Exception as exc:  # a command line is for reading; never let it stop a plan
        return f"<cannot render: {exc}>"


def resume_command(plan: Plan, ctx: PlanContext, step: int) -> str:
    args = list(plan.args)
    for option, value in ctx.resume.items():
        if option in args:
            continue
        for v in value if isinstance(value, list) else [value]:
            args += [option, str(v)]
    args += ["--from-step", str(step), "--plan-id", ctx.plan_id]
    return f"{plan.cli} {shlex.join(args)}".strip()


async def _check(probe: Probe | None, ctx: PlanContext) -> Check:
    from ms07.kube.types import KubeNotConfigured

    if probe is None:
        return Check.passed()
    try:
        return await probe(ctx)
    except KubeNotConfigured as exc:
        ctx.no_cluster = str(exc)
        return Check.failed(str(exc))
    except Ms07Error as exc:
        return Check.failed(str(exc))
    except Exception as exc:  # a check that cannot run is a failed check, not a traceback
        return Check.failed(f"unexpected {type(exc).__name__}: {clip(str(exc), 300)}")


def _operator() -> str:
    from ms07.recover.audit import operator

    return operator()


async def preview(plan: Plan, ctx: PlanContext, *, from_step: int = 1) -> PlanResult:
    """The dry run: every step with its command and its precondition checked; no action,
    no write of any kind."""
    ctx.previewing = True
    saved = (dict(ctx.facts), dict(ctx.resume))
    steps: list[StepResult] = []
    try:
        for i, step in enumerate(plan.steps, 1):
            sr = StepResult(i, step.title, "", step.changes)
            if i < from_step:
                sr.status, sr.message = "skipped", f"done before (resuming from step {from_step})"
            else:
                sr.precondition = await _check(step.precondition, ctx)
            sr.command = _text(step.command, ctx)
            steps.append(sr)
    finally:
        ctx.facts, ctx.resume = saved
        ctx.previewing = False
    if ctx.no_cluster is not None:
        _no_cluster(plan, steps, from_step)
    blocked = [s for s in steps if s.precondition is not None and s.precondition.ok is False]
    result = PlanResult(
        plan.name,
        ctx.plan_id or "",
        _operator(),
        "blocked" if blocked else "dry-run",
        steps,
        from_step,
    )
    if blocked:
        result.failed_step = blocked[0].index
        result.message = f"step {blocked[0].index} cannot run: {blocked[0].precondition.message}"  # type: ignore[union-attr]
    if ctx.no_cluster is not None:
        # Said once, with what works here instead of the command that just failed.
        result.message = (f"this procedure needs a Kubernetes cluster and none is configured here "
                          f"({ctx.no_cluster})" + ("; without one:" if plan.outside_cluster else ""))
        result.next_steps = list(plan.outside_cluster)
    return result


def _no_cluster(plan: Plan, steps: list[StepResult], from_step: int) -> None:
    """Every step that talks to Kubernetes is blocked with one short line; the reason is
    given once, in the plan's message."""
    for sr, step in zip(steps, plan.steps, strict=True):
        if sr.index < from_step:
            continue
        pre = sr.precondition
        if step.needs_cluster or (pre is not None and pre.ok is False and pre.message.startswith("kubernetes:")):
            sr.precondition = Check.failed("needs Kubernetes (none is configured here)")


async def execute(
    plan: Plan, ctx: PlanContext, *, from_step: int = 1, plan_id: str | None = None
) -> PlanResult:
    """Run the steps from ``from_step`` on, auditing each; stop at the first failure."""
    from ms07.recover.audit import AuditTrail

    if not 1 <= from_step <= len(plan.steps):
        raise Ms07Error(f"--from-step must be between 1 and {len(plan.steps)}")
    ctx.plan_id = plan_id or ctx.plan_id or new_plan_id(plan.name)
    trail = AuditTrail(ctx, plan.name)
    steps = [
        StepResult(i, s.title, _text(s.command, ctx), s.changes)
        for i, s in enumerate(plan.steps, 1)
    ]
    result = PlanResult(
        plan.name,
        ctx.plan_id,
        trail.operator,
        "running",
        steps,
        from_step,
        audit_file=str(trail.path),
    )
    await trail.write(
        None, "plan", plan.cli, "started", {"from_step": from_step, "args": plan.args}
    )
    for sr, step in zip(steps, plan.steps, strict=True):
        if sr.index < from_step:
            sr.status, sr.message = "skipped", f"done before (resuming from step {from_step})"
            continue
        sr.command = _text(step.command, ctx)
        sr.status, sr.started_at = "running", dt.datetime.now(dt.UTC).isoformat()
        t0 = time.perf_counter()
        ctx.reporter.step_started(sr)
        try:
            await trail.write(sr.index, sr.title, sr.command, "running", {})
            failure = await _run_step(step, sr, ctx)
        except (asyncio.CancelledError, KeyboardInterrupt):
            sr.status, sr.duration_ms = "interrupted", _ms(t0)
            await asyncio.shield(_interrupted(plan, ctx, result, sr, step, trail))
            raise
        sr.duration_ms = _ms(t0)
        if failure:
            sr.status, sr.message = "failed", failure
            result.status, result.failed_step = "failed", sr.index
            result.resume_command = resume_command(plan, ctx, sr.index)
            result.message = f"step {sr.index} ({sr.title}) failed: {failure}"
            ctx.reporter.step_finished(sr)
            await trail.write(
                sr.index,
                sr.title,
                sr.command,
                "failed",
                {"error": failure, "resume": result.resume_command, **sr.detail},
            )
            break
        ctx.reporter.step_finished(sr)
        await trail.write(
            sr.index,
            sr.title,
            sr.command,
            sr.status,
            {"message": sr.message, "verification": sr.verification, **sr.detail},
        )
    for sr in steps:
        if sr.status == "pending":
            sr.status = "not run"
    if result.status == "running":
        result.status = "completed"
        result.next_steps = plan.after(ctx) if plan.after else []
    await trail.write(
        None,
        "plan",
        plan.cli,
        result.status,
        {"failed_step": result.failed_step, "message": result.message},
    )
    result.audit_db = trail.db_note
    return result


async def _run_step(step: Step, sr: StepResult, ctx: PlanContext) -> str | None:
    """Precondition, action, verification. Returns the failure line, or None."""
    pre = await _check(step.precondition, ctx)
    sr.precondition = pre
    if pre.ok is False:
        return f"precondition not met: {pre.message}"
    try:
        outcome = await step.action(ctx) or Outcome()
    except Ms07Error as exc:
        return str(exc)
    except Exception as exc:  # the plan reports it and stops; it must not leave a traceback
        return f"unexpected {type(exc).__name__}: {clip(str(exc), 300)}"
    sr.status, sr.message, sr.detail = outcome.status, outcome.message, outcome.detail
    if outcome.status != "skipped" and step.verify is not None:
        check = await _check(step.verify, ctx)
        sr.verification = check.message
        if check.ok is False:
            return f"verification failed: {check.message}"
    return None


async def _interrupted(
    plan: Plan, ctx: PlanContext, result: PlanResult, sr: StepResult, step: Step, trail: Any
) -> None:
    done = [s for s in result.steps if s.status in DONE and s.index >= result.from_step]
    later = [s for s in result.steps if s.index > sr.index]
    result.status = "interrupted"
    result.failed_step = sr.index
    result.resume_command = resume_command(plan, ctx, sr.index)
    result.message = f"interrupted during step {sr.index} ({sr.title})"
    result.state = [
        *(f"done: step {s.index}, {s.title}: {s.message or s.status}" for s in done),
        f"interrupted: step {sr.index}, {sr.title}: {step.if_interrupted}",
        *(f"not done: step {s.index}, {s.title}" for s in later),
    ]
    for s in later:
        s.status = "not run"
    try:
        await trail.write(
            sr.index,
            sr.title,
            sr.command,
            "interrupted",
            {"state": result.state, "resume": result.resume_command},
        )
        await trail.write(None, "plan", plan.cli, "interrupted", {"failed_step": sr.index})
    finally:
        result.audit_db = trail.db_note
        ctx.reporter.interrupted(result)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 1)


Confirm = Callable[[PlanResult], bool]


def settle(
    shown: PlanResult, *, dry_run: bool, yes: bool, confirm: Confirm | None = None
) -> PlanResult | None:
    """After the preview: the result to stop with (dry run, blocked, not confirmed), or
    None to execute. The one place that decides whether a plan runs."""
    if dry_run or shown.status == "blocked":
        return shown
    if not yes and not (confirm is not None and confirm(shown)):
        shown.status, shown.message = "declined", "not confirmed: nothing was done"
        return shown
    return None


async def run(
    plan: Plan,
    ctx: PlanContext,
    *,
    dry_run: bool = False,
    yes: bool = False,
    confirm: Confirm | None = None,
    from_step: int = 1,
    plan_id: str | None = None,
) -> PlanResult:
    """Preview, :func:`settle`, execute, in one event loop (runbooks, the library). The CLI
    runs the same three phases in two loops so that Ctrl-C at its prompt is a plain No."""
    shown = await preview(plan, ctx, from_step=from_step)
    stop = settle(shown, dry_run=dry_run, yes=yes, confirm=confirm)
    if stop is not None:
        return stop
    return await execute(plan, ctx, from_step=from_step, plan_id=plan_id)
