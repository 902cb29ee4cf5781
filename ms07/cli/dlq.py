"""``ms07 dlq``: list, replay and purge the dead-letter queue."""

from __future__ import annotations

import typer

from ms07.cli import common
from ms07.errors import UsageError

app = typer.Typer(help="The dead-letter queue: list, replay, purge.", no_args_is_help=True)


@app.command("list")
def list_(
    ctx: typer.Context,
    limit: int = typer.Option(100, "--limit", min=1, max=10000),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Parked distributions with their reason and last error."""
    from ms07 import dlq

    st = common.state(ctx)

    async def go(rt):  # type: ignore[no-untyped-def]
        async with rt.connection() as conn:
            return await dlq.list_dlq(conn, await rt.queue(), limit)

    data = common.with_runtime(st.settings, go, console=None if as_json else st.err)
    if as_json:
        common.print_json(data)
        return
    from rich.table import Table

    table = Table(title=f"DLQ: {data['parked_total']} parked jobs, {data['stream_length']} stream entries")
    for col in ("distribution_id", "destination", "status", "reason", "error", "last error"):
        table.add_column(col, overflow="fold")
    for p in data["parked_jobs"]:
        table.add_row(p["distribution_id"], p["destination"], p["status"], p["reason"],
                      p["last_error_code"] or "", (p["last_error"] or "")[:80])
    for o in data["entries_without_job"]:
        table.add_row(o.get("distribution_id") or "-", o.get("destination") or "-", "no job",
                      o.get("reason", ""), o.get("error_code", ""), o.get("last_error", "")[:80])
    st.console.print(table)


@app.command("replay")
def replay(
    ctx: typer.Context,
    ids: list[str] = typer.Argument(None, help="Distribution ids to replay."),
    all_: bool = typer.Option(False, "--all", help="Replay every parked distribution."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Put parked distributions back in the queue with a fresh attempt budget."""
    from ms07 import dlq

    st = common.state(ctx)
    if bool(ids) == all_:
        raise UsageError("give distribution ids or --all (not both)")

    async def go(rt):  # type: ignore[no-untyped-def]
        async with rt.connection() as conn:
            return await dlq.replay(conn, await rt.queue(), None if all_ else ids)

    replayed = common.with_runtime(st.settings, go, console=None if as_json else st.err)
    if as_json:
        common.print_json({"replayed": replayed})
    else:
        st.console.print(f"replayed {len(replayed)} distribution(s)")
    if ids and len(replayed) < len(ids):
        st.err.print(f"[yellow]{len(ids) - len(replayed)} id(s) were not parked[/]")
        raise typer.Exit(1)


@app.command("purge")
def purge(
    ctx: typer.Context,
    ids: list[str] = typer.Argument(None, help="Distribution ids (default: all)."),
    yes: bool = typer.Option(False, "--yes", help="Required: purging cannot be undone."),
) -> None:
    """Delete parked distributions and their DLQ entries for good."""
    from ms07 import dlq

    st = common.state(ctx)
    if not yes:
        raise UsageError("purge deletes parked distributions for good; add --yes to confirm")

    async def go(rt):  # type: ignore[no-untyped-def]
        async with rt.connection() as conn:
            return await dlq.purge(conn, await rt.queue(), ids or None)

    result = common.with_runtime(st.settings, go, console=st.err)
    st.console.print(f"purged {result['jobs']} parked job(s) and {result['dlq_entries']} DLQ entries")
