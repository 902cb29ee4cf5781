"""``ms07 embedded``: the embedded PostgreSQL and Redis used when no URLs are set."""

from __future__ import annotations

import typer

from ms07.cli import common

app = typer.Typer(help="The embedded PostgreSQL and Redis (used when no URLs are set).", no_args_is_help=True)


@app.command("start")
def start(ctx: typer.Context) -> None:
    """Start the embedded servers (or find them running) and print their URLs."""
    from ms07 import embedded

    st = common.state(ctx)
    servers = embedded.ensure_servers(st.settings.resolved_state_dir())
    st.console.print(f"PostgreSQL: {servers.database_url}")
    st.console.print(f"Redis:      {servers.redis_url}")
    st.console.print(f"state dir:  {servers.state_dir}")


@app.command("stop")
def stop(ctx: typer.Context) -> None:
    """Stop the embedded servers of this state directory."""
    from ms07 import embedded

    st = common.state(ctx)
    stopped = embedded.stop_servers(st.settings.resolved_state_dir())
    for name, done in stopped.items():
        st.console.print(f"{name}: {'stopped' if done else 'was not running'}")
