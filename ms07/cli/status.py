"""``ms07 status``: one distribution, its status and every attempt."""

from __future__ import annotations

import typer

from ms07.cli import common
from ms07.errors import NotFound


def status(
    ctx: typer.Context,
    distribution_id: str = typer.Argument(..., help="The distribution id, or its first hex digits (e.g. 6d6d823d)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a distribution, its status and every attempt in time order.

    Exit codes: 0 shown, 2 not an id or a prefix several ids share, 4 no such distribution."""
    from ms07.ops.status import distribution_status, resolve_id

    st = common.state(ctx)

    async def go(rt):  # type: ignore[no-untyped-def]
        async with rt.connection() as conn:
            return await distribution_status(conn, await resolve_id(conn, distribution_id))

    data = common.with_runtime(st.settings, go)
    if data is None:  # deleted (dlq purge) between the two reads
        raise NotFound(f"no distribution {distribution_id}")
    if as_json:
        common.print_json(data)
        return
    from rich.table import Table

    st.console.print(f"[bold]{data['distribution_id']}[/] -> {data['destination']}: [bold]{data['status']}[/]"
                     + (f"  ({data['last_error_code']}: {data['last_error']})" if data["last_error_code"] else ""))
    facts = [f"created {data['created_at']}", f"attempts {data['attempt_count']} of {data['max_attempts']}",
             f"next attempt {data['next_attempt_at'] or '-'}"]
    if data["completed_at"]:
        facts.append(f"completed {data['completed_at']}")
    if data.get("payload_expunged_at"):
        facts.append(f"payload expunged {data['payload_expunged_at']}")
    if data["correlation_id"]:
        facts.append(f"correlation {data['correlation_id']}")
    st.console.print("  ".join(facts), soft_wrap=True)
    table = Table()
    for col in ("started", "completed", "attempt", "status", "HTTP", "error"):
        table.add_column(col)
    for a in data["attempts"]:
        table.add_row(str(a["started_at"]), str(a["completed_at"]), str(a["attempt"]), a["status"],
                      str(a["response_status_code"] or "-"), a["error_code"] or "")
    st.console.print(table)
