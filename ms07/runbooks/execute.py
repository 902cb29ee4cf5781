"""Run one parsed step command through the library and say what it found.

Every command's result becomes a :class:`Outcome`: a level for ``status`` (healthy,
warning, critical, unknown), the worst finding's severity, the diagnose checks it ran
(what ``finding()`` sees next), a few summary lines, the next command to type, and its
JSON. ``ok`` is False only when the command could not do its job (a recover plan that
failed, was blocked or not confirmed; a command that raised): that stops the runbook.
A diagnose check that finds a problem is *ok*: finding it is its job.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ms07.config import Settings
from ms07.errors import Ms07Error
from ms07.levels import SEVERITY_RANK, Level, level_of
from ms07.logs import clip
from ms07.runbooks.commands import Command

# A plan that was interrupted did not reach a verdict (level_of says critical for its
# step); a runbook reads the plan as unknown then.
PLAN_LEVEL = {"interrupted": Level.UNKNOWN}

Confirm = Callable[[Any], bool]


@dataclass
class Outcome:
    """What a step's command did (see the module docstring)."""

    ok: bool = True
    verdict: str = ""
    status: str = "healthy"
    severity: str = "none"
    lines: list[str] = field(default_factory=list)
    next_command: str | None = None
    remedy: str = ""
    checks: list[tuple[str, str, list[tuple[str, str]]]] = field(default_factory=list)
    data: Any = None


async def run(
    command: Command,
    settings: Settings,
    *,
    dry_run: bool,
    yes: bool,
    plan_id: str,
    confirm: Confirm | None = None,
    reporter: Any = None,
) -> Outcome:
    """Run ``command``; a dry run previews recover plans and reads everything else."""
    try:
        if command.kind == "diagnose":
            return await _diagnose(command, settings, dry_run)
        if command.kind == "recover":
            return await _recover(
                command,
                settings,
                dry_run=dry_run,
                yes=yes,
                plan_id=plan_id,
                confirm=confirm,
                reporter=reporter,
            )
        return await _READS[command.path](command, settings)
    except Ms07Error as exc:
        return Outcome(False, "error", "unknown", lines=[str(exc)])
    except (asyncio.CancelledError, KeyboardInterrupt):
        raise
    except Exception as exc:  # PostgreSQL or Redis out of reach, or a bug: one line, and stop
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return Outcome(
            False, "error", "unknown", lines=[clip(f"{type(exc).__name__}: {text}", 300)]
        )


async def _diagnose(command: Command, settings: Settings, dry_run: bool) -> Outcome:
    from ms07.diagnose import DiagnoseOptions, run_checks_async

    options = DiagnoseOptions.from_settings(settings, **command.diagnose_overrides())
    report = await run_checks_async(settings, command.checks, options)
    out = Outcome(verdict=report.status, status=report.status)
    worst = None
    for result in report.results:
        out.checks.append(
            (result.check, result.status, [(f.id, f.severity) for f in result.findings])
        )
        for f in result.findings:
            if SEVERITY_RANK[f.severity] > SEVERITY_RANK[out.severity]:
                out.severity = f.severity
            if f.severity != "info" or f.unknown:
                out.lines.append(
                    f"{f.status.upper()} {f.id}: {f.summary}"
                    + (f" ({f.evidence})" if f.evidence and len(f.evidence) <= 160 else "")
                )
                if f.command and (
                    worst is None or SEVERITY_RANK[f.severity] > SEVERITY_RANK[worst.severity]
                ):
                    worst = f
    if not out.lines:
        out.lines.append(
            f"no problem found ({sum(len(r.findings) for r in report.results)} findings, all info)"
        )
    out.next_command = worst.command if worst else None
    out.remedy = worst.remedy if worst else ""
    out.data = report.results[0].as_json() if len(report.results) == 1 else report.as_json()
    if command.params.get("notify"):
        out.lines.append(await _notify(settings, report, dry_run))
    return out


async def _notify(settings: Settings, report: Any, dry_run: bool) -> str:
    if dry_run:
        return "--notify: not sent (dry run)"
    if not settings.escalation.alertmanager_url:
        return "--notify: not sent (escalation.alertmanager_url is not set)"
    from ms07.diagnose.notify import NotifyError, notify

    try:
        sent = await notify(settings, report)
    except NotifyError as exc:
        return f"--notify failed: {exc}"
    return f"notified: {sent.alerts} alert(s) to {sent.url}"


async def _recover(
    command: Command,
    settings: Settings,
    *,
    dry_run: bool,
    yes: bool,
    plan_id: str,
    confirm: Confirm | None,
    reporter: Any,
) -> Outcome:
    from ms07 import recover

    proc, opts, kube = command.recover()
    plan = proc.build(settings, opts, kube)
    run = recover.RunOptions(
        dry_run=dry_run or bool(command.params.get("dry_run")),
        yes=yes or bool(command.params.get("yes")),
        plan_id=plan_id,
    )
    result = await recover.run_plan(
        plan, settings, run, kube=kube, reporter=reporter, confirm=confirm
    )
    level = PLAN_LEVEL.get(result.status) or level_of(result.status) or Level.UNKNOWN
    out = Outcome(result.ok, result.status, level, data=result.to_dict())
    if any(s.status == "warning" for s in result.steps) and out.status == "healthy":
        out.status = "warning"
    for s in result.steps:
        if result.status in ("dry-run", "blocked", "declined"):
            pre = s.precondition
            state = (
                "later"
                if pre is not None and pre.ok is None
                else "ok"
                if pre is None or pre.ok
                else "NOT MET"
            )
            note = f" ({pre.message})" if pre is not None and pre.message else ""
            out.lines.append(f"{s.index}. {s.title}: would run; precondition {state}{note}")
        else:
            text = s.message or s.verification
            out.lines.append(f"{s.index}. {s.title}: {s.status}" + (f": {text}" if text else ""))
    out.lines += [f"next: {n}" for n in result.next_steps]
    if result.message:
        out.lines.append(result.message)  # last: the runbook quotes it as the step's message
    if result.status == "failed":
        out.next_command = result.resume_command
    elif result.status == "blocked" and result.next_steps:
        # e.g. no Kubernetes here: what works here, not the command that just failed.
        out.next_command = result.next_steps[0].split("   #")[0].strip()
    elif result.status in ("blocked", "declined"):
        out.next_command = f"{plan.cli} {' '.join([*plan.args, '--dry-run'])}".strip()
    elif result.next_steps:
        out.next_command = result.next_steps[0].split("   #")[0].strip()
    return out


async def _health(command: Command, settings: Settings) -> Outcome:
    from ms07.ops.healthcheck import base_url, fetch_health

    p = command.params
    result = await fetch_health(
        base_url(settings, p.get("url")),
        settings.api_token(),
        bool(p.get("detailed")),
        timeout=p.get("timeout") or 10.0,
    )
    level = level_of(result["status"]) or Level.UNKNOWN
    out = Outcome(verdict=result["status"], status=level, data=result)
    report = result.get("report") or {}
    checks = ", ".join(f"{k} {v}" for k, v in (report.get("checks") or {}).items())
    out.lines.append(
        f"{result['url']}: {result['status']}"
        + (f" ({checks})" if checks else "")
        + (f": {result['error']}" if result.get("error") else "")
    )
    if level != "healthy":
        out.next_command = "ms07 diagnose health"
    return out


async def _queue_stats(command: Command, settings: Settings) -> Outcome:
    from ms07.runtime import Runtime

    async with Runtime(settings, migrate=False) as rt:
        stats = await (await rt.queue()).stats()
    out = Outcome(verdict="ok", data=stats)
    out.lines.append(
        f"{stats['total_length']} stream entries, {stats['total_pending']} pending, "
        f"{stats['total_delayed']} delayed, DLQ {stats['dlq']}"
    )
    for name, q in stats["queues"].items():
        out.lines.append(
            f"queue {name}: length {q['length']}, pending {q['pending']}, "
            f"{len(q['consumers'])} consumer(s), delayed {q['delayed']}"
        )
    return out


async def _dlq_list(command: Command, settings: Settings) -> Outcome:
    from ms07.ops import dlq
    from ms07.runtime import Runtime

    async with Runtime(settings, migrate=False) as rt:
        async with rt.connection() as conn:
            data = await dlq.list_dlq(conn, await rt.queue(), command.params.get("limit") or 100)
    parked = data["parked_total"] or data["stream_length"]
    out = Outcome(verdict="ok", status="warning" if parked else "healthy", data=data)
    out.lines.append(
        f"{data['parked_total']} parked job(s), {data['stream_length']} DLQ stream entries"
    )
    reasons: dict[str, int] = {}
    for p in data["parked_jobs"]:
        key = f"{p['destination']} {p['reason']} {p['last_error_code'] or ''}".strip()
        reasons[key] = reasons.get(key, 0) + 1
    out.lines += [f"{n} x {k}" for k, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:5]]
    if parked:
        out.next_command = "ms07 dlq replay --all"
    return out


async def _destinations_check(command: Command, settings: Settings) -> Outcome:
    from ms07.ops import destinations as dest_ops

    results = await dest_ops.check(
        settings, command.params.get("names") or None, command.params.get("timeout")
    )
    bad = [r for r in results if not r["healthy"]]
    out = Outcome(
        verdict="failed" if bad else "ok", status="warning" if bad else "healthy", data=results
    )
    for r in results:
        error = r.get(f"{r['failed_stage']}_error") if r.get("failed_stage") else None
        out.lines.append(
            f"{r['name']}: "
            + ("ok" if r["healthy"] else f"failed at {r['failed_stage']}")
            + (f": {error}" if error else "")
        )
    if bad:
        out.next_command = "ms07 diagnose timeouts"
    return out


_READS = {
    ("health",): _health,
    ("queue", "stats"): _queue_stats,
    ("dlq", "list"): _dlq_list,
    ("destinations", "check"): _destinations_check,
}
