"""``ms07 db``: the PostgreSQL schema."""

from __future__ import annotations

import typer

from ms07.cli import common

app = typer.Typer(help="PostgreSQL schema: migrations.", no_args_is_help=True)


@app.command("migrate")
def migrate(ctx: typer.Context) -> None:
    """Apply pending schema migrations (idempotent; safe with several replicas)."""
    st = common.state(ctx)

    async def go(rt):  # type: ignore[no-untyped-def]
        return await rt.migrate()

    applied = common.with_runtime(st.settings, go, create=True, console=st.err)
    if applied:
        for name in applied:
            st.console.print(f"applied {name}")
    else:
        st.console.print("schema is up to date")


@app.command("status")
def status(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Show the schema version and the migrations this version of ms07 ships."""
    from ms07.store import db

    st = common.state(ctx)

    async def go(rt):  # type: ignore[no-untyped-def]
        conn = await db.connect(rt.database_url)
        try:
            return await db.schema_version(conn)
        finally:
            await conn.close()

    current = common.with_runtime(st.settings, go, console=None if as_json else st.err)
    latest = max(v for v, _, _ in db.migrations())
    if as_json:
        common.print_json({"current": current, "latest": latest, "up_to_date": current == latest})
    else:
        st.console.print(f"schema version {current or 'none'}, latest {latest}")
    if current != latest:
        raise typer.Exit(1)
