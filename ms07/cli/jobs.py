"""``ms07 jobs list`` (the history, filtered, newest first) and ``ms07 jobs show``."""

from __future__ import annotations

import typer

from ms07.cli import common
from ms07.cli import status as status_command

app = typer.Typer(help="Search the history of distributions.", no_args_is_help=True)

DESTINATION = typer.Option(None, "--destination", "-d", help="Only this destination.")
STATUS = typer.Option(None, "--status", help="Statuses, comma-separated (dead,failed).")
SINCE = typer.Option(None, "--since", help="From this time: ISO 8601 with an offset, an age (2h, 30m, 1d) "
                     "or HH:MM today in the local zone.")
UNTIL = typer.Option(None, "--until", help="Before this time (same forms as --since).")
ON = typer.Option("created", "--on", help="Which time --since/--until bound: created or finished.")


@app.command("list")
def list_(
    ctx: typer.Context,
    destination: str = DESTINATION,
    status: str = STATUS,
    since: str = SINCE,
    until: str = UNTIL,
    on: str = ON,
    correlation_id: str = typer.Option(None, "--correlation-id", help="Only this correlation id."),
    idempotency_key: str = typer.Option(None, "--idempotency-key", help="Only this idempotency key."),
    error_code: str = typer.Option(None, "--error-code", help="Only jobs whose last error has this code."),
    limit: int = typer.Option(50, "--limit", help="At most this many (1 to 1000)."),
    cursor: str = typer.Option(None, "--cursor", help="The next page: the cursor the previous page printed."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON ({distributions, next_cursor})."),
) -> None:
    """List distributions, newest first, one page at a time.

    Exit codes: 0 listed (also when none match), 2 bad input (a time, a status, a cursor
    from another query)."""
    from ms07.ops import search

    st = common.state(ctx)
    flt = search.parse_filter({"destination": destination, "status": status, "since": since, "until": until,
                               "on": on, "correlation_id": correlation_id, "idempotency_key": idempotency_key,
                               "error_code": error_code})
    limit = search.parse_limit(limit)
    if cursor:
        search.decode_cursor(flt, cursor)  # refused before any server is reached

    async def go(rt):  # type: ignore[no-untyped-def]
        async with rt.connection() as conn:
            return await search.search(conn, flt, limit, cursor)

    page = common.with_runtime(st.settings, go, console=None if as_json else st.err)
    for note in flt.notes:
        st.err.print(f"[dim]{note}[/]", soft_wrap=True)
    if as_json:
        common.print_json(page)
        return
    from rich.table import Table

    table = Table()
    for col in ("id", "destination", "status", "attempts", "created", "finished", "last error"):
        table.add_column(col)
    for d in page["distributions"]:
        error = f"{d['last_error_code']}: {d['last_error'] or ''}" if d["last_error_code"] else ""
        table.add_row(d["distribution_id"], d["destination"], d["status"],
                      f"{d['attempt_count']}/{d['max_attempts']}", str(d["created_at"]),
                      str(d["completed_at"] or "-"), error[:60])
    st.console.print(table)
    shown = len(page["distributions"])
    if page["next_cursor"]:
        st.console.print(f"{shown} shown; next page: --cursor {page['next_cursor']}", soft_wrap=True)
    else:
        st.console.print(f"{shown} shown; no more")


app.command("show")(status_command.status)


@app.command("expunge")
def expunge(
    ctx: typer.Context,
    ids: list[str] = typer.Argument(..., help="Distribution ids whose payload to expunge."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask (required when not at a terminal)."),
) -> None:
    """Remove the payload of finished distributions now (an erasure request).

    The record stays (status, timings, errors, attempts) with payload_expunged_at set;
    the job can no longer be replayed. Each payload expunged is a recovery_audit row.
    An open job is refused: its delivery still needs the payload. Exit codes: 0 every
    payload expunged (or already gone), 1 a job is still open (named) or the question
    was answered no, 2 bad input, 4 an id names no distribution."""
    from ms07.cli.dlq import _confirm
    from ms07.errors import NotFound
    from ms07.ops import expunge as ops
    from ms07.recover.audit import operator

    st = common.state(ctx)
    wanted = ops.check_ids(ids)  # bad input is refused before anything is reached
    _confirm(st, yes, f"Expunge the payload of {len(wanted)} distribution(s)? This cannot be undone.",
             "expunge removes payloads for good")
    command = "ms07 jobs expunge " + " ".join(wanted)

    async def go(rt):  # type: ignore[no-untyped-def]
        async with rt.connection() as conn:
            return await ops.expunge(conn, wanted, operator(), command)

    result = common.with_runtime(st.settings, go, console=st.err)
    done = [i for i, o in result.outcome.items() if o in ("expunged", "already")]
    st.console.print(f"expunged {len(done)} payload(s), {result.bytes} bytes")
    for did, outcome in result.outcome.items():
        if outcome == "already":
            st.console.print(f"{did}: already expunged", soft_wrap=True)
        elif outcome == "open":
            st.err.print(f"{did} not expunged: it is not finished (its delivery still needs the payload)",
                         soft_wrap=True)
        elif outcome == "unknown":
            st.err.print(f"no distribution {did}", soft_wrap=True)
    outcomes = set(result.outcome.values())
    if "unknown" in outcomes:
        raise typer.Exit(NotFound.exit_code)
    if "open" in outcomes:
        raise typer.Exit(1)
