"""A runbook as Markdown: for ``ms07 runbook show`` (rendered by Rich) and ``export``
(published to a wiki as it is). Deterministic: the same file gives the same text."""

from __future__ import annotations

from ms07.runbooks.model import PHASES, RESPONSE_TEXT, TEAMS, Runbook, Step

_PHASE_TITLES = {
    "diagnose": "Diagnose",
    "remediation": "Remediation",
    "verification": "Verification",
}
_PHASE_INTRO = {
    "diagnose": "Read-only checks: what is wrong, with the evidence.",
    "remediation": (
        "The fix. Recovery procedures show their plan and ask before they change anything "
        "(`--yes` runs them unattended, `--dry-run` only previews them)."
    ),
    "verification": "Checks that the problem is gone.",
}


def _step(step: Step) -> list[str]:
    out = [f"### {step.index}. {step.heading}", "", "```sh", step.run, "```", ""]
    if step.when is not None:
        out.append(f"- **Only when:** `{step.when.text}`")
    if step.expect is not None:
        out.append(f"- **Passes when:** `{step.expect.text}`")
    elif step.phase == "verification":
        out.append("- **Passes when:** `status == healthy`")
    if step.command.changes:
        out.append(
            "- **Changes things:** yes (a recovery plan: previewed, confirmed, verified, audited)"
        )
    if step.note:
        out.append(f"- {step.note}")
    if out[-1] != "":
        out.append("")
    return out


def markdown(book: Runbook) -> str:
    """The whole runbook as a Markdown document."""
    team_role = TEAMS[book.team][1]
    out = [f"# {book.title}", "", f"Runbook `{book.id}` of ms07-distributor.", ""]
    if book.summary:
        out += [book.summary, ""]
    out += [
        "| Priority | Respond within | Escalate to | Guide |",
        "|---|---|---|---|",
        f"| {book.priority} ({book.priority_text}) | {RESPONSE_TEXT[book.response_time]} | "
        f"{book.team}: {book.email} ({team_role}) | {book.guide or '-'} |",
        "",
        f"Run it: `ms07 runbook run {book.id}`. Preview first with `--dry-run` (changes nothing); "
        "`--yes` runs the recovery steps without asking.",
        "",
    ]
    if book.alerts:
        out += ["Alerts that link here: " + ", ".join(f"`{a}`" for a in book.alerts) + ".", ""]
    out += ["## Symptoms", "", *[f"- {s}" for s in book.symptoms], ""]
    for phase in PHASES:
        steps = book.phase(phase)
        out += [f"## {_PHASE_TITLES[phase]}", "", _PHASE_INTRO[phase], ""]
        if not steps:
            out += ["No automated step: see the notes of the diagnose steps.", ""]
        for step in steps:
            out += _step(step)
    out += ["## Prevention", "", *[f"- {p}" for p in book.prevention], ""]
    out += [
        "## When it does not work",
        "",
        "`ms07 runbook run` stops at the first step that fails and prints that step, a summary "
        "of its output and the next command to type. If that does not fix it within the response "
        f"time, escalate: **{book.priority}**, respond within "
        f"{RESPONSE_TEXT[book.response_time]}, to **{book.team}** ({book.email}). Every run is "
        "recorded in `recovery_audit` under its run id.",
        "",
        "Expressions in `Only when` / `Passes when`: `finding('<check>.<name>')` (reported at "
        "warning or worse), `severity('<id>')`, `status('<check>')`, `severity` / `status` of the "
        "step before, levels `none < healthy = info < unknown < warning < critical`, `and`, `or`, "
        "`not`, `in [...]`.",
    ]
    return "\n".join(out) + "\n"
