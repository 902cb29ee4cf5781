"""``ms07 embedded``: the embedded PostgreSQL and Redis used when no URLs are set."""

from __future__ import annotations

import typer

from ms07.cli import common

app = typer.Typer(help="The embedded PostgreSQL and Redis (used when no URLs are set).", no_args_is_help=True)


@app.command("start")
def start(ctx: typer.Context) -> None:
    """Start the embedded servers (or find them running), apply the schema, print their URLs."""
    from ms07 import embedded

    st = common.state(ctx)
    servers = embedded.ensure_servers(st.settings.resolved_state_dir())
    applied = common.run(_migrate(servers.database_url))
    st.console.print(f"PostgreSQL: {servers.database_url}")
    st.console.print(f"Redis:      {servers.redis_url}")
    st.console.print(f"state dir:  {servers.state_dir}")
    if applied:
        st.console.print(f"schema:     applied {', '.join(applied)}")


async def _migrate(url: str) -> list[str]:
    """The schema too: other commands only attach, and refuse a database without it."""
    from ms07.store import db

    conn = await db.connect(url)
    try:
        return await db.migrate(conn)
    finally:
        await conn.close()


@app.command("stop")
def stop(ctx: typer.Context) -> None:
    """Stop the embedded servers of this state directory."""
    from ms07 import embedded

    st = common.state(ctx)
    stopped = embedded.stop_servers(st.settings.resolved_state_dir())
    for name, done in stopped.items():
        st.console.print(f"{name}: {'stopped' if done else 'was not running'}")
