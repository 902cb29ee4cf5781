"""``ms07 diagnose``: the troubleshooting guide's checks: a verdict, the evidence, the next command.

Exit codes follow the monitoring-plugins convention, so alerting can run these as
plugins: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (could not check). Bad input is also 3.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import typer

from ms07.cli import common
from ms07.diagnose.options import COMMANDS, Command
from ms07.options import typer_command

app = typer.Typer(
    help="Scripted checks of the troubleshooting guide: verdict, evidence, next command. "
    "Exit codes: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
    no_args_is_help=True,
)


def _run(ctx: typer.Context, names: list[str], params: dict[str, Any]) -> None:
    from ms07.cli.diagnose_render import render_report
    from ms07.diagnose import DiagnoseOptions, DiagnoseUsageError, run_checks
    from ms07.diagnose.options import overrides
    from ms07.errors import ConfigError

    st = common.state(ctx)
    as_json, notify = params["as_json"], params["notify"]
    try:
        settings = st.settings
    except ConfigError as exc:
        raise DiagnoseUsageError(str(exc)) from None  # exit 3: the check could not run
    options = DiagnoseOptions.from_settings(settings, **overrides(params))
    if notify and not settings.escalation.alertmanager_url:
        raise DiagnoseUsageError("--notify: escalation.alertmanager_url is not set in the config")
    common.say_sources(None if as_json else st.err, settings)
    report = run_checks(settings, names, options)
    if as_json:
        common.print_json(report.results[0].as_json() if len(names) == 1 else report.as_json())
    else:
        render_report(st.console, report)
    if notify:
        from ms07.diagnose.notify import NotifyError
        from ms07.diagnose.notify import notify as post

        try:
            sent = common.run(post(settings, report))
            st.err.print(f"notified: {sent.alerts} alert(s) to {sent.url}")
        except NotifyError as exc:
            # The diagnosis stands; the exit code stays the verdict's.
            sys.stderr.write(f"error: {exc}\n")
    raise typer.Exit(report.exit_code)


def _command(command: Command) -> Callable[..., None]:
    """``ms07 diagnose <name>``, generated from its entry in ``COMMANDS``: each option is
    the ``DiagnoseOptions`` (or ``Output``) field that declares its flag, help and default."""

    def body(ctx: typer.Context, **values: Any) -> None:
        from ms07.diagnose import CHECKS

        _run(ctx, list(command.checks or CHECKS), values)

    return typer_command(command.specs(), body, name=command.name, help=command.help)


for _command_entry in COMMANDS.values():
    app.command(_command_entry.name)(_command(_command_entry))
