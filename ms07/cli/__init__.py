"""The ``ms07`` command line. Wires the sub-apps; no logic lives here."""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from ms07 import __version__
from ms07.cli import common
from ms07.errors import Ms07Error


class Ms07Group(TyperGroup):
    """Turns every ms07 error into one line on stderr and its exit code, for the real
    console script and for tests driving the app with CliRunner alike; and takes the
    global options after the subcommand too (``ms07 diagnose all --config F``)."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:  # type: ignore[override]
        from ms07.cli.hoist import hoist

        return super().parse_args(ctx, hoist(self, args))

    def invoke(self, ctx: typer.Context) -> object:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except Ms07Error as exc:
            typer.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)


app = typer.Typer(
    name="ms07",
    cls=Ms07Group,
    help="MS07 Distributor: the delivery engine and its on-call toolkit. "
    "The options below also work after the command (ms07 diagnose all --config F).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ms07 {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config: str = common.CONFIG_OPTION,
    log_level: str = typer.Option(
        None, "--log-level", help="DEBUG, INFO, WARNING, ERROR \\[env: MS07_LOG_LEVEL]"
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """MS07 Distributor: the delivery engine and its on-call toolkit."""
    ctx.obj = common.State(config=config, log_level=log_level)


def _register() -> None:
    from ms07.cli import (
        console,
        db,
        destinations,
        diagnose,
        dlq,
        embedded,
        health,
        jobs,
        queue,
        recover,
        replay,
        run,
        runbook,
        secrets,
        status,
        submit,
        workers,
    )

    app.command("run")(run.run)
    app.command("submit")(submit.submit)
    app.command("status")(status.status)
    app.command("health")(health.command)
    app.add_typer(jobs.app, name="jobs")
    app.command("replay")(replay.replay)
    app.add_typer(dlq.app, name="dlq")
    app.add_typer(destinations.app, name="destinations")
    app.add_typer(secrets.app, name="secrets")
    app.add_typer(diagnose.app, name="diagnose")
    app.add_typer(recover.app, name="recover")
    app.add_typer(runbook.app, name="runbook")
    app.add_typer(db.app, name="db")
    app.add_typer(queue.app, name="queue")
    app.add_typer(embedded.app, name="embedded")
    app.add_typer(workers.app, name="workers")
    app.command("console")(console.console)


_register()


def main() -> None:
    """Console entry point: every ms07 error is one line on stderr and an exit code."""
    try:
        app()
    except Ms07Error as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
