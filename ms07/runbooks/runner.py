"""Run a runbook: its steps in order, each step's verdict, the first failure explained.

For each step: ``when:`` is evaluated on what the steps before found (false: the step
is skipped); the command runs through the library (:mod:`ms07.runbooks.execute`);
``expect:`` judges the result (a verification step expects ``status == healthy`` unless
it says otherwise). The run stops at the first step that fails: the result names it,
summarises its output, gives the next command to type and the team to escalate to.

Every step's start and end is written to ``recovery_audit`` (and the audit JSONL file)
under the run id, which is also the plan id of the recover procedures the run starts.
A dry run writes nothing anywhere: recover steps are previewed, diagnose steps read, and
a verification that is not met yet is reported as ``unmet`` (the remediation was only
previewed), not as a failure. A diagnose step that finds a problem is ``found``, never
``passed``; a dry run that found one exits 1, and says what a real run would change
(``would_change``) and what it would not (``would_not``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ms07.config import Settings
from ms07.runbooks import execute
from ms07.runbooks.expr import Facts, compile_expression
from ms07.runbooks.model import Runbook, Step

DEFAULT_EXPECT = {"verification": "status == healthy"}


@dataclass
class StepRun:
    """One step of a run: what it ran and what came of it."""

    index: int
    phase: str
    title: str
    command: str
    when: str | None = None
    expect: str | None = None
    state: str = "not run"  # passed, found, failed, skipped, unmet (dry run), interrupted, not run
    verdict: str = ""  # the command's own: healthy, critical, completed, dry-run, failed, ...
    status: str = "none"
    severity: str = "none"
    message: str = ""
    lines: list[str] = field(default_factory=list)
    next_command: str | None = None
    remedy: str = ""
    data: Any = None
    started_at: str | None = None
    duration_ms: float | None = None


@dataclass
class RunbookRun:
    """The result of ``ms07 runbook run`` (``to_dict`` is its ``--json``)."""

    runbook: str
    title: str
    run_id: str
    operator: str
    dry_run: bool
    status: str  # running, completed, dry-run, failed
    steps: list[StepRun]
    escalation: dict[str, str]
    failed_step: int | None = None
    message: str = ""
    next_command: str | None = None
    remedy: str = ""
    audit_file: str | None = None
    audit_db: str | None = None
    would_change: list[str] = field(default_factory=list)  # dry run: what a real run would do
    would_not: list[str] = field(default_factory=list)  # dry run: remediation it would skip

    @property
    def ok(self) -> bool:
        return self.status in ("completed", "dry-run")

    @property
    def problems(self) -> list[int]:
        """Steps that found a problem still there (a diagnose finding, an unmet verification)."""
        return [s.index for s in self.steps if s.state in ("found", "unchecked", "unmet")]

    @property
    def exit_code(self) -> int:
        if self.status == "dry-run":
            return 1 if self.problems else 0  # a preview of a problem is not an all-clear
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


class Observer:
    """What the CLI shows while a runbook runs (the default shows nothing)."""

    def step_started(self, step: StepRun) -> None: ...
    def step_finished(self, step: StepRun) -> None: ...
    def recover_reporter(self, step: StepRun) -> Any:
        return None


def new_run_id(runbook: str) -> str:
    from ms07.recover.model import new_plan_id

    return new_plan_id(f"runbook-{runbook}")


async def run(
    book: Runbook,
    settings: Settings,
    *,
    dry_run: bool = False,
    yes: bool = False,
    confirm: Callable[[Any], bool] | None = None,
    observer: Observer | None = None,
    run_id: str | None = None,
) -> RunbookRun:
    """Run ``book``. Without ``yes`` (and not a dry run), recover steps that do not carry
    their own ``--yes`` need ``confirm(plan_preview) -> bool``; no ``confirm``: declined."""
    from ms07.recover.audit import AuditTrail, operator
    from ms07.recover.plan import PlanContext

    observer = observer or Observer()
    rid = run_id or new_run_id(book.id)
    result = RunbookRun(
        book.id,
        book.title,
        rid,
        operator(),
        dry_run,
        "running",
        [
            StepRun(
                s.index, s.phase, s.heading, s.run, s.when.text if s.when else None, _expect_text(s)
            )
            for s in book.steps
        ],
        {
            "priority": book.priority,
            "response_time": book.response_time,
            "team": book.team,
            "email": book.email,
            "text": book.escalation,
        },
    )
    facts = Facts(dry_run=dry_run)
    audit_ctx = PlanContext(settings, dry_run=dry_run)
    audit_ctx.plan_id = rid
    trail = None if dry_run else AuditTrail(audit_ctx, f"runbook:{book.id}")
    line = f"ms07 runbook run {book.id}" + (" --yes" if yes else "")
    try:
        if trail is not None:
            result.audit_file = str(trail.path)
            await trail.write(None, "runbook", line, "started", {"title": book.title, "yes": yes})
        for step, sr in zip(book.steps, result.steps, strict=True):
            try:
                await _step(
                    step,
                    sr,
                    settings,
                    facts,
                    trail,
                    observer,
                    dry_run=dry_run,
                    yes=yes,
                    run_id=rid,
                    confirm=confirm,
                )
            except (asyncio.CancelledError, KeyboardInterrupt):
                sr.state = "interrupted"
                if trail is not None:
                    await asyncio.shield(_interrupted(trail, sr, line))
                raise
            if sr.state == "failed":
                result.status, result.failed_step = "failed", sr.index
                result.message = f"step {sr.index} ({sr.title}) failed: {sr.message}"
                result.next_command, result.remedy = sr.next_command, sr.remedy
                break
        if result.status == "running":
            result.status = "dry-run" if dry_run else "completed"
        if result.status == "dry-run":
            _what_a_real_run_would_do(book, result)
        if trail is not None:
            await trail.write(
                None,
                "runbook",
                line,
                result.status,
                {
                    "failed_step": result.failed_step,
                    "message": result.message,
                    "next_command": result.next_command,
                    "remedy": result.remedy or None,
                    "escalation": book.escalation if result.status == "failed" else None,
                },
            )
            result.audit_db = trail.db_note
    finally:
        await asyncio.shield(audit_ctx.aclose())
    return result


def _what_a_real_run_would_do(book: Runbook, result: RunbookRun) -> None:
    for step, sr in zip(book.steps, result.steps, strict=True):
        if step.phase != "remediation":
            continue
        if sr.state == "skipped":
            result.would_not.append(f"step {sr.index} ({step.run}): {sr.message}")
        elif step.command.changes:
            result.would_change.append(f"step {sr.index}: {step.run}")


async def _interrupted(trail: Any, sr: StepRun, line: str) -> None:
    await trail.write(sr.index, sr.title, sr.command, "interrupted", {})
    await trail.write(None, "runbook", line, "interrupted", {"failed_step": sr.index})


def _expect_text(step: Step) -> str | None:
    if step.expect is not None:
        return step.expect.text
    return DEFAULT_EXPECT.get(step.phase)


async def _step(
    step: Step,
    sr: StepRun,
    settings: Settings,
    facts: Facts,
    trail: Any,
    observer: Observer,
    *,
    dry_run: bool,
    yes: bool,
    run_id: str,
    confirm: Callable[[Any], bool] | None,
) -> None:
    if step.when is not None and not step.when.evaluate(facts):
        sr.state, sr.message = "skipped", f"when: {step.when.text} is false"
        observer.step_finished(sr)
        if trail is not None:
            await trail.write(sr.index, sr.title, sr.command, "skipped", {"when": step.when.text})
        return
    sr.state, sr.started_at = "running", dt.datetime.now(dt.UTC).isoformat()
    observer.step_started(sr)
    if trail is not None:
        await trail.write(sr.index, sr.title, sr.command, "running", {"phase": sr.phase})
    t0 = time.perf_counter()
    out = await execute.run(
        step.command,
        settings,
        dry_run=dry_run,
        yes=yes,
        plan_id=run_id,
        confirm=confirm,
        reporter=observer.recover_reporter(sr),
    )
    sr.duration_ms = round((time.perf_counter() - t0) * 1000, 1)
    sr.verdict, sr.status, sr.severity = out.verdict, out.status, out.severity
    sr.lines, sr.next_command, sr.remedy, sr.data = (
        out.lines,
        out.next_command,
        out.remedy,
        out.data,
    )
    for check, status, findings in out.checks:
        facts.record_check(check, status, findings)
    facts.last_status, facts.last_severity = out.status, out.severity
    expect = step.expect or (
        compile_expression(DEFAULT_EXPECT[step.phase]) if step.phase in DEFAULT_EXPECT else None
    )
    problem = None
    if not out.ok:
        sr.state = "failed"
        sr.message = out.lines[-1] if out.lines else f"{sr.command} ended {out.verdict}"
    elif step.phase == "verification" and out.status == "unknown":
        # A check that could not look is no proof that the problem is gone.
        unknown = next((x for x in out.lines if x.startswith("UNKNOWN")), out.verdict)
        problem = f"could not verify: {unknown}"
    elif expect is not None and not expect.evaluate(facts):
        problem = f"expect: {expect.text} is not met ({sr.command}: {out.verdict})"
    elif step.phase == "diagnose" and out.status in ("warning", "critical", "unknown"):
        # Finding it is the step's job (the run goes on), but it is not a pass; nor is a
        # check that could not look.
        sr.state = "found" if out.status != "unknown" else "unchecked"
        sr.message = out.lines[0] if out.lines else out.verdict
    else:
        sr.state = "passed"
    if problem is not None:
        if dry_run and step.phase == "verification":
            sr.state, sr.message = (
                "unmet",
                f"{problem}; not yet expected in a dry run (the remediation was only previewed)",
            )
        else:
            sr.state, sr.message = "failed", problem
    observer.step_finished(sr)
    if trail is not None:
        await trail.write(
            sr.index,
            sr.title,
            sr.command,
            sr.state,
            {
                "verdict": sr.verdict,
                "status": sr.status,
                "message": sr.message,
                "summary": sr.lines[:20],
                "next_command": sr.next_command,
            },
        )
