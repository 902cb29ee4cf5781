"""``ms07 dlq``: list, replay and purge the dead-letter queue."""

from __future__ import annotations

import typer

from ms07.cli import common
from ms07.errors import NotFound, UsageError
from ms07.logs import clip
from ms07.options import specs, typer_command
from ms07.read_options import DlqListOptions

app = typer.Typer(help="The dead-letter queue: list, replay, purge.", no_args_is_help=True)


def list_(ctx: typer.Context, limit: int, as_json: bool) -> None:
    from ms07.ops import dlq

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
                      p["last_error_code"] or "", clip(p["last_error"] or "", 80))
    for o in data["entries_without_job"]:
        table.add_row(o.get("distribution_id") or "-", o.get("destination") or "-", "no job",
                      o.get("reason", ""), o.get("error_code", ""), clip(o.get("last_error", ""), 80))
    st.console.print(table)


def _confirm(st: common.State, yes: bool, question: str, refusal: str) -> None:
    """Go on with ``--yes``; at a terminal, ask (default No); otherwise refuse with the
    reason: a script must say ``--yes``, never be held by a prompt nobody answers."""
    import sys

    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{refusal}; add --yes to confirm")
    from rich.prompt import Confirm

    try:
        confirmed = Confirm.ask(question, default=False, console=st.console)
    except (EOFError, KeyboardInterrupt):
        confirmed = False
    if not confirmed:
        st.err.print("not confirmed: nothing was done.")
        raise typer.Exit(1)


app.command("list")(
    typer_command(
        specs(DlqListOptions), list_, name="list",
        help="Parked distributions with their reason and last error.",
    )
)


@app.command("replay")
def replay(
    ctx: typer.Context,
    ids: list[str] = typer.Argument(None, help="Distribution ids to replay."),
    all_: bool = typer.Option(False, "--all", help="Replay every parked distribution (asks, or --yes)."),
    yes: bool = typer.Option(False, "--yes", help="With --all: do not ask (required when not at a terminal)."),
    rate: float = typer.Option(100.0, "--rate", help="With --all: at most this many jobs a second."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Put parked distributions back in the queue with a fresh attempt budget.

    --all is `ms07 replay --status failed,dead --yes`: audited, throttled by --rate, and
    resumed by running it again after an interruption.

    Exit codes: 0 all replayed, 1 an id was not parked (named, with its status) or the
    question was answered no, 2 bad usage (--all without --yes when not at a terminal),
    4 an id names no distribution."""
    from ms07.ops import dlq

    st = common.state(ctx)
    if ids and all_:
        raise UsageError("give distribution ids or --all, not both")
    if not ids and not all_:
        raise UsageError("nothing to replay: give distribution ids, or --all for every parked distribution")
    if not rate > 0:
        raise UsageError(f"--rate {rate:g} must be above 0 (jobs a second)")
    if ids:
        ids = dlq.check_ids(ids)  # bad input is refused before anything is reached
    if all_:
        _confirm(st, yes, "Replay every parked distribution?",
                 "replay --all puts every parked distribution back in the queue")

    async def go(rt):  # type: ignore[no-untyped-def]
        if all_:  # a replay by filter (ms07 replay): audited, throttled, resumable
            from ms07.ops import replay as rp
            from ms07.recover.audit import operator

            done: list[str] = []
            async with rt.connection() as conn:
                planned, _ = await rp.plan(conn, rp.parked_request(), operator())
            async with rt.connection() as conn:
                await rp.run(conn, await rt.queue(), st.settings, planned["replay_id"], rate=rate,
                             on_enqueued=done.extend)
            return done, {}
        async with rt.connection() as conn:
            replayed = await dlq.replay(conn, await rt.queue(), st.settings, ids)
            return replayed, await dlq.not_replayed(conn, ids or [], replayed)

    replayed, skipped = common.with_runtime(st.settings, go, console=None if as_json else st.err)
    if as_json:
        common.print_json({"replayed": replayed, "not_replayed": skipped})
    else:
        st.console.print(f"replayed {len(replayed)} distribution(s)")
    for did, state in skipped.items():
        st.err.print(f"no distribution {did}" if state is None
                     else f"{did} not replayed: its payload was expunged, nothing is left to send"
                     if state == dlq.EXPUNGED else f"{did} not replayed: it is {state}, not parked", soft_wrap=True)
    if skipped:
        raise typer.Exit(NotFound.exit_code if None in skipped.values() else 1)


@app.command("purge")
def purge(
    ctx: typer.Context,
    ids: list[str] = typer.Argument(None, help="Distribution ids (default: all)."),
    yes: bool = typer.Option(False, "--yes", help="Purge without asking (required when not at a terminal)."),
) -> None:
    """Delete parked distributions and their DLQ entries for good."""
    from ms07.ops import dlq

    st = common.state(ctx)
    if ids:
        ids = dlq.check_ids(ids)  # bad input is refused before anything is reached
    _confirm(st, yes, f"Purge {'these' if ids else 'every'} parked distribution(s) for good?",
             "purge deletes parked distributions for good")

    async def go(rt):  # type: ignore[no-untyped-def]
        async with rt.connection() as conn:
            return await dlq.purge(conn, await rt.queue(), ids or None)

    result = common.with_runtime(st.settings, go, console=st.err)
    st.console.print(f"purged {result['jobs']} parked job(s) and {result['dlq_entries']} DLQ entries")
