"""``ms07 console``: the operator console on its own (no engine needed)."""

from __future__ import annotations

import typer

from ms07.cli import common


def console(
    ctx: typer.Context,
    http_port: int = typer.Option(
        None, "--http-port", help="Port to serve the console on (default 8081) \\[env: MS07_CONSOLE_HTTP_PORT]",
        envvar="MS07_CONSOLE_HTTP_PORT", show_envvar=False,
    ),
) -> None:
    """Serve the operator console (http://HOST:PORT/console/) reading PostgreSQL and Redis
    directly, for when no engine is up. Same tokens and pages as the engine's /console;
    stops on Ctrl-C / SIGTERM."""
    from ms07.console.standalone import DEFAULT_PORT, run
    from ms07.errors import UsageError

    port = DEFAULT_PORT if http_port is None else http_port
    if not 0 <= port <= 65535:
        raise UsageError(f"--http-port {port} is not a TCP port (0-65535)")
    raise typer.Exit(run(common.state(ctx).settings, port))
