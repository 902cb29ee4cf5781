"""``ms07 workers``: the workers' heartbeats; mark a crashed one as seen."""

from __future__ import annotations

import typer

from ms07.cli import common
from ms07.errors import NotFound, UsageError

app = typer.Typer(help="Worker heartbeats: list them, forget crashed ones once seen.", no_args_is_help=True)


@app.command("list")
def list_(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every worker the database knows: host, pid, status and when it last beat."""
    from ms07.store import heartbeats

    st = common.state(ctx)

    async def go(rt):  # type: ignore[no-untyped-def]
        async with rt.connection() as conn:
            return await heartbeats.list_workers(conn)

    data = common.with_runtime(st.settings, go, console=None if as_json else st.err)
    if as_json:
        common.print_json(data)
        return
    from rich.table import Table

    table = Table(title="workers")
    for col in ("worker", "host", "pid", "status", "started", "last beat", "in flight"):
        table.add_column(col, overflow="fold")
    for w in data:
        table.add_row(w["worker_id"], w["host"], str(w["pid"]), w["status"], str(w["started_at"])[:19],
                      f"{float(w['seconds_since_update']):.0f}s ago", str(w["in_flight"]))
    st.console.print(table)


@app.command("forget")
def forget(
    ctx: typer.Context,
    worker_ids: list[str] = typer.Argument(..., help="Worker ids (see `ms07 diagnose queue` or `ms07 workers list`)."),
) -> None:
    """Mark crashed workers as seen: drop their rows so diagnose stops reporting them.

    Only workers silent longer than service.stale_worker_minutes; each one forgotten is
    written to recovery_audit with the row it had (who, when, host, pid, last beat)."""
    from ms07.recover.audit import operator
    from ms07.recover.model import new_plan_id
    from ms07.store import audit, heartbeats

    st = common.state(ctx)
    silent = st.settings.service.stale_worker_minutes * 60

    async def go(rt):  # type: ignore[no-untyped-def]
        done, missing = [], []
        plan_id = new_plan_id("workers-forget")
        async with rt.connection() as conn, conn.transaction():
            # One transaction: a live worker among the ids forgets none of them.
            for wid in worker_ids:
                try:
                    row = await heartbeats.forget(conn, wid, silent)
                except ValueError as exc:
                    raise UsageError(str(exc)) from None
                if row is None:
                    missing.append(wid)
                    continue
                await audit.record(conn, operator=operator(), plan_id=plan_id, plan="workers forget",
                                   step=f"forget worker {wid}", outcome="done",
                                   command=f"ms07 workers forget {wid}",
                                   detail={k: str(v) for k, v in row.items()})
                done.append(wid)
        return done, missing

    done, missing = common.with_runtime(st.settings, go, console=st.err)
    for wid in done:
        st.console.print(f"forgot worker {wid} (recorded in recovery_audit)")
    if missing:
        raise NotFound(f"no worker {', '.join(missing)}")
