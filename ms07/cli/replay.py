"""``ms07 replay``: put the jobs a filter picks back on the queue, reviewed first."""

from __future__ import annotations

import shlex
import sys
from typing import Any

import typer

from ms07.cli import common
from ms07.cli.jobs import DESTINATION, SINCE, UNTIL
from ms07.errors import UsageError


def replay(
    ctx: typer.Context,
    destination: str = DESTINATION,
    status: str = typer.Option(None, "--status", help="Statuses, comma-separated (default: failed,dead)."),
    since: str = SINCE,
    until: str = UNTIL,
    include_delivered: bool = typer.Option(False, "--include-delivered",
                                           help="Also replay delivered jobs (they reach the receiver again)."),
    rate: float = typer.Option(100.0, "--rate", help="At most this many jobs a second."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count and sample the jobs; change nothing."),
    yes: bool = typer.Option(False, "--yes", help="Run it: freeze the selection, audit it, enqueue."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Replay the finished jobs a filter picks (failed and dead by default), same ids.

    --dry-run counts and samples them; --yes freezes the selection, audits it and
    re-enqueues it in batches at --rate. Interrupted (Ctrl-C, a crash), the same
    command resumes it and enqueues no job twice. A replayed job keeps its id, so the
    receiver sees the same Idempotency-Key; its attempt numbering continues.

    Exit codes: 0 done (or the dry run), 1 cancelled or run by another process, 2 bad
    input, 3 PostgreSQL or Redis out of reach, 130 interrupted (run it again to resume)."""
    from ms07.ops import replay as rp

    st = common.state(ctx)
    raw = {k: v for k, v in (("destination", destination), ("status", status),
                             ("since", since), ("until", until)) if v is not None}
    req = rp.parse_request(raw, include_delivered)
    if dry_run == yes:
        raise UsageError("give --dry-run to see what would be replayed, or --yes to replay it")
    if not rate > 0:
        raise UsageError(f"--rate {rate:g} must be above 0 (jobs a second)")
    for note in req.filter.notes:
        st.err.print(f"[dim]{note}[/]", soft_wrap=True)
    if dry_run:
        async def look(rt):  # type: ignore[no-untyped-def]
            async with rt.connection() as conn:
                return await rp.preview(conn, req)

        found = common.with_runtime(st.settings, look, console=None if as_json else st.err)
        if as_json:
            common.print_json(found)
        else:
            _show_preview(st, found)
        return

    progress = None if as_json or not sys.stderr.isatty() else _progress(st)

    async def go(rt):  # type: ignore[no-untyped-def]
        from ms07.recover.audit import operator

        async with rt.connection() as conn:
            planned, resumed = await rp.plan(conn, req, operator())
        if not as_json:
            verb = "resuming" if resumed else "replaying"
            st.err.print(f"{verb} replay {planned['replay_id']}: {planned['matched']} job(s), "
                         f"{planned['enqueued'] + planned['skipped']} done before", soft_wrap=True)
        task = progress.add_task("replay", total=planned["matched"]) if progress else None

        def moved(row: dict[str, Any]) -> None:
            if progress is not None and task is not None:
                progress.update(task, completed=row["enqueued"] + row["skipped"])

        async with rt.connection() as conn:
            return await rp.run(conn, await rt.queue(), st.settings, planned["replay_id"], rate=rate,
                                on_progress=moved)

    try:
        if progress is not None:
            with progress:
                result = common.with_runtime(st.settings, go, console=None if as_json else st.err)
        else:
            result = common.with_runtime(st.settings, go, console=None if as_json else st.err)
    except KeyboardInterrupt:
        st.err.print("interrupted: jobs already enqueued stay so; run the same command again to resume: "
                     + " ".join(shlex.quote(a) for a in sys.argv), soft_wrap=True)
        raise typer.Exit(130) from None
    if as_json:
        common.print_json(result)
    else:
        st.console.print(f"replay {result['replay_id']} {result['status']}: {result['enqueued']} enqueued, "
                         f"{result['skipped']} skipped (no longer as selected) of {result['matched']}")
    if result["status"] != "done":
        raise typer.Exit(1)


def _progress(st: common.State) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=st.err, transient=False)


def _show_preview(st: common.State, found: dict[str, Any]) -> None:
    from rich.table import Table

    f = found["filter"]
    what = ", ".join(f"{k} {v}" for k, v in (("destination", f["destination"]), ("status", ",".join(f["status"])),
                                             ("since", f["since"]), ("until", f["until"])) if v)
    st.console.print(f"would replay {found['matched']} job(s): {what}", soft_wrap=True)
    if found["resumes"]:
        r = found["resumes"]
        st.console.print(f"--yes resumes replay {r['replay_id']} ({r['status']}, "
                         f"{r['enqueued'] + r['skipped']} of {r['matched']} done) instead", soft_wrap=True)
    if found["sample"]:
        table = Table(title=f"newest {len(found['sample'])}")
        for col in ("id", "destination", "status", "attempts", "last error", "created"):
            table.add_column(col)
        for s in found["sample"]:
            table.add_row(s["distribution_id"], s["destination"], s["status"], str(s["attempts"]),
                          s["last_error_code"] or "", str(s["created_at"]))
        st.console.print(table)
    st.console.print("nothing changed (dry run); run again with --yes to replay")
