"""How ``ms07 diagnose`` looks on the terminal (Rich): a one-line verdict on top, then a
findings table per check and its evidence tables. Colours: :mod:`ms07.cli.display`."""

from __future__ import annotations

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from ms07.cli.display import style
from ms07.diagnose.model import CheckResult, Report, Section
from ms07.logs import redact

LABELS = {"healthy": "OK", "warning": "WARNING", "critical": "CRITICAL", "unknown": "UNKNOWN"}
BAR_WIDTH = 40


def verdict(result: CheckResult) -> Text:
    """``CRITICAL timeouts: 3 job(s) in processing for more than 30m (+2 more)``."""
    text = Text()
    text.append(LABELS[result.status], style=style(result.status, bold=True))
    text.append(f" {result.check}: ")
    problems = [f for f in result.findings if f.status != "healthy"]
    if problems:
        text.append(problems[0].summary)
        if len(problems) > 1:
            text.append(f" (+{len(problems) - 1} more)")
    else:
        text.append("no problem found")
    return text


def report_verdict(report: Report) -> Text:
    """``CRITICAL: the engine does not answer at ... (health); +4 more in queue CRITICAL, ...``:
    the most important finding of all (``Report.headline``), then where the others are."""
    text = Text()
    text.append(LABELS[report.status], style=style(report.status, bold=True))
    head = report.headline()
    if head is None:
        text.append(f": all {len(report.results)} checks healthy")
        return text
    check, first = head
    text.append(f": {first.summary} ({check})")
    more = sum(1 for _, f in report.findings() if f.status != "healthy") - 1
    if more:
        bad = sorted((r for r in report.results if r.status != "healthy"),
                     key=lambda r: min(f.order for f in r.findings))
        text.append(f"; +{more} more in " + ", ".join(f"{r.check} {LABELS[r.status]}" for r in bad))
    return text


def findings_table(result: CheckResult) -> Table:
    table = Table(title=f"{result.check} ({LABELS[result.status]}, {result.duration_ms:.0f} ms)",
                  title_justify="left", expand=False, show_lines=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("finding", overflow="fold", ratio=3)
    table.add_column("what to do", overflow="fold", ratio=2)
    for f in result.findings:
        sev = Text("unknown" if f.unknown else f.severity,
                   style=style("unknown" if f.unknown else f.severity))
        what = Text()
        what.append(f.summary, style="bold" if f.severity != "info" else "")
        what.append(f"\n{f.id}", style="dim")
        if f.evidence:
            what.append(f"\n{f.evidence}", style="dim")
        todo = Text()
        if f.remedy:
            todo.append(f.remedy)
        if f.command:
            todo.append(("\n" if f.remedy else "") + "$ " + f.command, style="bold cyan")
        table.add_row(sev, what, todo)
    return table


def section_view(section: Section) -> Table | Group:
    if section.chart is not None:
        return _chart(section)
    table = Table(title=section.title, title_justify="left", expand=False)
    for col in section.columns:
        table.add_column(col, overflow="fold")
    for row in section.rows:
        table.add_row(*[Text(redact(str(c))) for c in row])
    return table


def _chart(section: Section) -> Group:
    bars = section.chart or []
    top = max((v for _, v, _ in bars), default=0.0) or 1.0
    width = max((len(label) for label, _, _ in bars), default=0)
    lines = [Text(section.title, style="italic")]
    for label, value, over in bars:
        line = Text(f"{label:<{width}} ")
        line.append("█" * max(1 if value > 0 else 0, round(value / top * BAR_WIDTH)), style="red" if over else "green")
        line.append(f" {value:,.1f} {section.unit}" + ("  over" if over else ""))
        lines.append(line)
    return Group(*lines)


def render_result(console: Console, result: CheckResult, *, with_verdict: bool = True) -> None:
    if with_verdict:
        console.print(verdict(result))
    console.print(findings_table(result))
    for section in result.sections:
        if section.rows or section.chart:
            console.print(section_view(section))


def render_report(console: Console, report: Report) -> None:
    if len(report.results) == 1:
        render_result(console, report.results[0])
        return
    console.print(report_verdict(report))
    summary = Table(title="summary", title_justify="left")
    for col in ("check", "status", "critical", "warning", "unknown", "first problem", "ms"):
        summary.add_column(col, overflow="fold")
    # Checks ordered by their most important finding, so the first row is where to look.
    ordered = sorted(report.results, key=lambda r: min((f.order for f in r.findings), default=(0, 0)))
    for r in ordered:
        counts = {k: sum(1 for f in r.findings if f.status == k) for k in ("critical", "warning", "unknown")}
        first = next((f.summary for f in r.findings if f.status != "healthy"), "")
        summary.add_row(r.check, Text(LABELS[r.status], style=style(r.status, bold=True)),
                        *(str(counts[k]) for k in ("critical", "warning", "unknown")), first, f"{r.duration_ms:.0f}")
    console.print(summary)
    for r in ordered:
        console.print()
        console.print(verdict(r))
        render_result(console, r, with_verdict=False)
