"""How a plan looks on the terminal (Rich): the plan for review, progress, the outcome."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ms07.cli import display
from ms07.recover.plan import PlanResult, Reporter, StepResult


def _check(step: StepResult) -> Text:
    pre = step.precondition
    if pre is None:
        return Text(step.message or "-", style="dim")
    if pre.ok is None:
        return Text(f"later: {pre.message}", style=display.style("later"))
    if pre.ok:
        return Text(f"ok: {pre.message}" if pre.message else "ok", style=display.style("ok"))
    return Text(f"NOT MET: {pre.message}", style=display.style("failed", bold=True))


def plan_table(console: Console, result: PlanResult, summary: str) -> None:
    """The plan as the reviewer reads it: each step, the equivalent command, its precondition."""
    table = Table(title=f"recover {result.plan}: {summary}", show_lines=True, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("step")
    table.add_column("equivalent command", overflow="fold")
    table.add_column("writes", justify="center")
    table.add_column("precondition", overflow="fold")
    for s in result.steps:
        table.add_row(
            str(s.index),
            Text(s.title),
            Text(s.command, style="cyan"),
            "yes" if s.changes else "no",
            _check(s),
        )
    console.print(table)


class RichReporter(Reporter):
    """Prints each step as it starts and ends, evidence tables, logs and a live depth view."""

    def __init__(self, console: Console, total: int) -> None:
        self.console = console
        self.total = total
        self._live: Live | None = None
        self._samples: list[dict[str, Any]] = []

    def step_started(self, step: StepResult) -> None:
        self.console.print(
            Text.assemble((f"\n[{step.index}/{self.total}] ", "bold"), (step.title, "bold"))
        )
        self.console.print(Text(f"  $ {step.command}", style="cyan"), overflow="fold")

    def step_finished(self, step: StepResult) -> None:
        style = display.style(step.status, bold=step.status in ("failed", "interrupted"))
        line = Text.assemble(
            ("  " + step.status.upper(), style), f"  {step.message}" if step.message else ""
        )
        self.console.print(line, overflow="fold")
        if step.verification:
            self.console.print(
                Text(f"  verified: {step.verification}", style="dim"), overflow="fold"
            )

    def info(self, message: str) -> None:
        self.console.print(Text(f"  {message}"), overflow="fold")

    def table(self, title: str, columns: list[str], rows: list[list[Any]]) -> None:
        table = Table(title=title, title_justify="left")
        for col in columns:
            table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(*(Text("" if v is None else str(v)) for v in row))
        self.console.print(table)

    def lines(self, title: str, lines: list[str]) -> None:
        self.console.print(Text(f"  {title}", style="bold"))
        for line in lines or ["(empty)"]:
            self.console.print(Text(f"    {line}"), overflow="fold")

    def _depth_table(self) -> Table:
        table = Table(title="queue depth (live)", title_justify="left")
        for col in ("t (s)", "depth", "pending", "delayed", "consumers"):
            table.add_column(col, justify="right")
        for s in self._samples[-12:]:
            table.add_row(
                f"{s['t']:g}",
                str(s["depth"]),
                str(s["pending"]),
                str(s["delayed"]),
                str(s["consumers"]),
            )
        return table

    def watch(self, title: str, sample: dict[str, Any] | None) -> None:
        if sample is None:
            if self._live is not None:
                self._live.update(self._depth_table())
                self._live.stop()
                self._live = None
                self.console.print()
            self._samples = []
            return
        self._samples.append(sample)
        if self._live is None:
            self._live = Live(self._depth_table(), console=self.console, refresh_per_second=4)
            self._live.start()
        else:
            self._live.update(self._depth_table())

    def interrupted(self, result: PlanResult) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        self.console.print(
            Text("\nInterrupted. The system is now in this state:", style="bold red")
        )
        for line in result.state:
            self.console.print(Text(f"  - {line}"), overflow="fold")
        if result.resume_command:
            self.console.print(Text("To resume from the interrupted step:", style="bold"))
            self.console.print(Text(f"  {result.resume_command}", style="cyan"), overflow="fold")


def summary(console: Console, result: PlanResult) -> None:
    """The end of a run: the verdict, the resume command on failure, the audit trail."""
    console.print()
    if result.status == "completed":
        warned = [s for s in result.steps if s.status == "warning"]
        console.print(
            Text(
                f"recover {result.plan}: completed"
                + (f" with {len(warned)} warning(s)" if warned else ""),
                style="yellow" if warned else "bold green",
            )
        )
    elif result.status == "failed":
        console.print(
            Text(f"recover {result.plan}: {result.message}", style="bold red"), overflow="fold"
        )
        console.print(
            Text(
                "The plan stopped there; nothing after that step ran. Fix the cause, then resume "
                "with:"
            )
        )
        console.print(Text(f"  {result.resume_command}", style="cyan"), overflow="fold")
    for hint in result.next_steps:
        console.print(Text(f"next: {hint}"), overflow="fold")
    if result.audit_file:
        console.print(
            Text(
                f"audit: plan {result.plan_id}, {result.audit_file}; {result.audit_db}", style="dim"
            ),
            overflow="fold",
        )
