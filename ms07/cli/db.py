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


@app.command("prune")
def prune(
    ctx: typer.Context,
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be removed; remove nothing."),
    archive: str = typer.Option(None, "--archive", help="Write the finished jobs and their attempts to this "
                                "directory as gzip JSON Lines first (read back and counted before removal)."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan and the result as JSON."),
) -> None:
    """Remove what the retention policy (the retention: section) says is past its age.

    Finished jobs past their age go with their attempts and DLQ stream entries; old
    payloads are expunged (the row stays). Open jobs are never removed. What would be
    removed (rows and bytes per table) is printed before anything is removed; removal
    runs in small batches with pauses so delivery goes on. Exit codes: 0 done, 1 stopped
    part-way or another run in progress (run it again), 2 bad input."""
    from ms07.ops import retention

    st = common.state(ctx)
    if archive is not None:
        retention.check_archive_dir(archive)  # before any server is reached
    ret = st.settings.retention

    def show_plan(run: retention.Run) -> None:
        if as_json:
            return
        if ret.off:
            st.console.print("retention is off (every age is 0 or null): nothing is ever removed")
        _table(st, "would remove" if dry_run else "removing", run.plan)

    async def go(rt):  # type: ignore[no-untyped-def]
        async with rt.connection() as conn:
            return await retention.prune(conn, ret, redis=await rt.redis(), dry_run=dry_run,
                                         archive_dir=archive, runner="cli", on_plan=show_plan)

    run = common.with_runtime(st.settings, go, console=None if as_json else st.err)
    if as_json:
        common.print_json(run.as_json())
    elif not dry_run and not ret.off:
        _table(st, "removed", run.removed)
        if run.archive is not None:
            st.console.print(f"archived {run.archive['jobs']} jobs and {run.archive['attempts']} attempts in "
                             f"{len(run.archive['files'])} files under {run.archive['dir']}", soft_wrap=True)
    if run.note:
        st.err.print(run.note, soft_wrap=True)
    if run.outcome != "done":
        raise typer.Exit(1)


def _table(st: common.State, title: str, counts: dict[str, dict[str, int]]) -> None:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("what")
    table.add_column("rows", justify="right")
    table.add_column("bytes (estimate)", justify="right")
    for name, c in counts.items():
        table.add_row(name, str(c["rows"]), _human(c["bytes"]) if c["bytes"] else "-")
    st.console.print(table)


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover
