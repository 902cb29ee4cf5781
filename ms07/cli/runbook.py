"""``ms07 runbook``: the troubleshooting guide's procedures as YAML runbooks.

Runbooks are read from ``$MS07_RUNBOOKS_DIR``, else the repository's ``runbooks/``, else
the copy installed with the package, else ``/usr/share/ms07/runbooks``.
Exit codes of ``run``: 0 completed (or a dry run that found nothing), 1 a step failed or
was not confirmed, or a dry run found a problem; 2 invalid runbook or usage, 4 no such runbook.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ms07.cli import common, display
from ms07.errors import UsageError

app = typer.Typer(
    help="YAML runbooks: list, show, run, export, validate. Read from MS07_RUNBOOKS_DIR, else the "
    "repository's runbooks/, else the copy installed with ms07, else /usr/share/ms07/runbooks.",
    no_args_is_help=True,
)

Name = Annotated[
    str, typer.Argument(help="Runbook id (see `ms07 runbook list`) or a path to a .yaml file.")
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]



def _state_style(state: str) -> str:
    # A problem found or a step failed is the headline of a runbook run.
    return display.style(state, bold=state in ("found", "failed"))


@app.command("list")
def list_(ctx: typer.Context, as_json: Json = False) -> None:
    """Every runbook: id, title, priority (response time) and the team to escalate to."""
    from ms07 import runbooks

    books = runbooks.load_all()
    if as_json:
        common.print_json(
            [
                {
                    "id": b.id,
                    "title": b.title,
                    "priority": b.priority,
                    "response_time": b.response_time,
                    "team": b.team,
                    "email": b.email,
                    "source": str(b.source),
                }
                for b in books
            ]
        )
        return
    from rich.table import Table

    table = Table(title=f"runbooks in {runbooks.runbooks_dir()}", title_justify="left")
    for col in ("id", "title", "severity", "escalate to"):
        table.add_column(col, overflow="fold")
    for b in books:
        table.add_row(b.id, b.title, f"{b.priority} (< {b.response_time})", f"{b.team} {b.email}")
    common.state(ctx).console.print(table)


@app.command("show")
def show(ctx: typer.Context, name: Name) -> None:
    """A runbook as readable Markdown: symptoms, steps with their conditions, escalation."""
    from rich.markdown import Markdown

    from ms07 import runbooks

    common.state(ctx).console.print(Markdown(runbooks.markdown(runbooks.load(name))))


@app.command("export")
def export(
    ctx: typer.Context,
    name: Name,
    fmt: Annotated[
        str, typer.Option("--format", help="markdown (for a wiki, unchanged) or json.")
    ] = "markdown",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to FILE instead of stdout.")
    ] = None,
) -> None:
    """A runbook as Markdown (or JSON), to publish it to a wiki as it is."""
    import json

    from ms07 import runbooks

    if fmt not in ("markdown", "json"):
        raise UsageError(f"--format: {fmt!r} is not one of markdown, json")
    book = runbooks.load(name)
    text = (
        runbooks.markdown(book)
        if fmt == "markdown"
        else json.dumps(book.as_dict(), indent=2) + "\n"
    )
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--output: cannot write {output}: {exc.strerror}") from None
    common.state(ctx).err.print(f"wrote {output}")


@app.command("validate")
def validate(
    ctx: typer.Context,
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Runbook files (default: every runbook).")
    ] = None,
) -> None:
    """Check runbook files (schema, commands and their arguments, when:/expect: expressions).

    Every problem is one line naming the file and the line; exit 2 if any file is invalid."""
    from ms07 import runbooks
    from ms07.errors import Ms07Error

    st = common.state(ctx)
    targets = list(paths or runbooks.files())
    if not targets:
        raise UsageError(f"no runbook files in {runbooks.runbooks_dir()}")
    bad = 0
    for path in targets:
        try:
            book = runbooks.load(path)
        except Ms07Error as exc:
            bad += 1
            typer.echo(f"error: {exc}", err=True)
            continue
        st.console.print(f"ok: {path} ({book.id}, {len(book.steps)} steps)", soft_wrap=True)
    if bad:
        raise typer.Exit(2)


@app.command("run")
def run(
    ctx: typer.Context,
    name: Name,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Diagnose for real; only preview recovery steps; write nothing."
        ),
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Run recovery steps without asking.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the run as JSON (needs --dry-run or --yes).")
    ] = False,
) -> None:
    """Run a runbook's steps in order through the library and show each step's verdict.

    `when:` skips steps whose condition on earlier findings is false; recovery steps ask
    before they change anything unless --yes (or their own --yes). The run stops at the
    first failing step with what to do next and whom to escalate to; every step is
    recorded in recovery_audit under the run id. --dry-run previews recovery steps only."""
    from ms07 import runbooks

    st = common.state(ctx)
    if as_json and not (dry_run or yes):
        raise UsageError("--json needs --dry-run or --yes: there is no prompt in JSON mode")
    book = runbooks.load(name)
    settings = st.settings
    observer = runbooks.Observer() if as_json else _rich_observer(st.console, len(book.steps))
    confirm = None if as_json else _confirm(st.console)
    try:
        result = common.run(
            runbooks.run(
                book, settings, dry_run=dry_run, yes=yes, confirm=confirm, observer=observer
            )
        )
    except KeyboardInterrupt:
        st.err.print("interrupted: see recovery_audit for the steps that ran")
        raise typer.Exit(130) from None
    if as_json:
        common.print_json(result.to_dict())
    else:
        _summary(st.console, result)
    raise typer.Exit(result.exit_code)


def _confirm(console: Any) -> Any:
    def ask(shown: Any) -> bool:
        from rich.prompt import Confirm

        from ms07.cli import recover_render as render

        render.plan_table(console, shown, "review before it runs")
        try:
            return Confirm.ask(f"Run recover {shown.plan}?", default=False, console=console)
        except (EOFError, KeyboardInterrupt):
            return False

    return ask


def _rich_observer(console: Any, total: int) -> Any:
    """Each step as it starts and ends; a recover plan's progress indented under it."""
    from ms07.runbooks import Observer

    class RichObserver(Observer):
        def __init__(self, console: Any, total: int) -> None:
            self.console = console
            self.total = total

        def step_started(self, step: Any) -> None:
            from rich.text import Text

            self.console.print(
                Text.assemble(
                    (f"\n[{step.index}/{self.total}] ", "bold"),
                    (f"{step.phase}: ", "dim"),
                    (step.title, "bold"),
                )
            )
            self.console.print(Text(f"  $ {step.command}", style="cyan"), overflow="fold")

        def step_finished(self, step: Any) -> None:
            from rich.text import Text

            if step.state == "skipped":
                self.console.print(
                    Text.assemble(
                        (f"\n[{step.index}/{self.total}] ", "bold"),
                        (f"{step.phase}: ", "dim"),
                        (step.title, "dim"),
                        ("  SKIPPED ", "dim"),
                        (step.message, "dim"),
                    )
                )
                return
            self.console.print(
                Text.assemble(
                    ("  " + step.state.upper(), _state_style(step.state)),
                    "  ",
                    (step.verdict, display.style(step.status)),
                    f"  ({step.duration_ms:.0f} ms)" if step.duration_ms is not None else "",
                )
            )
            for line in step.lines[:15]:
                self.console.print(Text(f"    {line}"), overflow="fold")
            if len(step.lines) > 15:
                self.console.print(
                    Text(f"    ... {len(step.lines) - 15} more (--json shows all)", style="dim")
                )
            if step.message and step.state in ("failed", "unmet") and step.message not in step.lines[:15]:
                self.console.print(
                    Text(f"    {step.message}", style=_state_style(step.state)), overflow="fold"
                )

        def recover_reporter(self, step: Any) -> Any:
            from ms07.recover.model import Reporter

            console = self.console

            class Progress(Reporter):
                def step_started(self, s: Any) -> None:
                    console.print(f"    · {s.title}", style="dim", highlight=False)

                def info(self, message: str) -> None:
                    console.print(f"      {message}", style="dim", highlight=False)

                def lines(self, title: str, lines: list[str]) -> None:
                    console.print(f"      {title}", highlight=False)
                    for line in lines[-20:]:
                        console.print(
                            f"        {line}", style="dim", highlight=False, overflow="fold"
                        )

                def table(self, title: str, columns: list[str], rows: list[list[Any]]) -> None:
                    from rich.table import Table

                    t = Table(title=title, title_justify="left")
                    for c in columns:
                        t.add_column(c, overflow="fold")
                    for r in rows[:20]:
                        t.add_row(*(str(v) for v in r))
                    console.print(t)

            return Progress()

    return RichObserver(console, total)


def _dry_run_summary(console: Any, result: Any) -> None:
    """What the preview found, what a real run would change and what it would not."""
    from rich.text import Text

    def steps(states: tuple[str, ...]) -> str:
        return ", ".join(str(s.index) for s in result.steps if s.state in states)

    console.print("dry run: nothing was changed.")
    if steps(("found",)):
        console.print(Text(f"problem found at step(s) {steps(('found',))}: see their findings above",
                           style="bold yellow"), overflow="fold")
    if steps(("unchecked",)):
        console.print(Text(f"could not check at step(s) {steps(('unchecked',))}", style="magenta"), overflow="fold")
    if result.would_change:
        console.print("a real run would run: " + "; ".join(result.would_change), overflow="fold")
    else:
        console.print(Text("a real run would change nothing: no remediation step would run", style="bold"),
                      overflow="fold")
    for line in result.would_not:
        console.print(f"a real run would skip {line}", overflow="fold")
    unmet = steps(("unmet",))
    if unmet:
        console.print(
            Text(f"verification not met at step(s) {unmet}: "
                 + ("the remediation above is meant to fix it; verify after a real run"
                    if result.would_change else "a real run would not fix it: act on the findings above"),
                 style="yellow"),
            overflow="fold",
        )


def _summary(console: Any, result: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"runbook {result.runbook}: {result.title}", title_justify="left")
    for col in ("#", "phase", "step", "result", "verdict"):
        table.add_column(col, overflow="fold")
    for s in result.steps:
        table.add_row(
            str(s.index),
            s.phase,
            s.title,
            Text(s.state, style=_state_style(s.state)),
            Text(s.verdict, style=display.style(s.status)),
        )
    console.print()
    console.print(table)
    esc = result.escalation["text"]
    if result.status == "failed":
        failed = next(s for s in result.steps if s.index == result.failed_step)
        console.print(Text.assemble(("FAILED ", "bold red"), result.message), overflow="fold")
        for line in failed.lines[:10]:
            if line != failed.message:  # already in the FAILED line
                console.print(Text(f"  {line}"), overflow="fold")
        if result.remedy:
            console.print(Text.assemble(("what to do: ", "bold"), result.remedy), overflow="fold")
        if result.next_command:
            console.print(
                Text.assemble(("next: ", "bold"), (result.next_command, "cyan")), overflow="fold"
            )
        console.print(Text.assemble(("escalate: ", "bold"), esc), overflow="fold")
    elif result.status == "dry-run":
        _dry_run_summary(console, result)
    else:
        console.print(
            Text.assemble(
                ("completed", "bold green"), f": every step passed (run {result.run_id})."
            )
        )
    if result.audit_file:
        console.print(
            Text(
                f"audit: run id {result.run_id}; {result.audit_db}; {result.audit_file}",
                style="dim",
            ),
            overflow="fold",
        )
