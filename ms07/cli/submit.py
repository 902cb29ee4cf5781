"""``ms07 submit``: accept distributions from the command line, like POST /distributions."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ms07.cli import common
from ms07.errors import UsageError


def submit(
    ctx: typer.Context,
    destination: list[str] = typer.Option(..., "--destination", "-d", help="Destination name (repeatable)."),
    data: str = typer.Option(None, "--data", help="The payload, as JSON text (a file: --file PATH)."),
    file: Path = typer.Option(None, "--file", help="Read the JSON payload from a file ('-' for stdin)."),
    correlation_id: str = typer.Option(None, "--correlation-id", help="Shared by the jobs of this submit."),
    priority: str = typer.Option(None, "--priority", help="Queue to use (default: distribution.default_priority)."),
    idempotency_key: str = typer.Option(None, "--idempotency-key", help="A repeat with the same key makes nothing new."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Submit a distribution for one or more destinations (one job each)."""
    import sys

    from ms07.submit import submit as do_submit

    st = common.state(ctx)
    if (data is None) == (file is None):
        raise UsageError("give exactly one of --data or --file")
    if file is not None:
        try:
            text = sys.stdin.read() if str(file) == "-" else file.read_text()
        except OSError as exc:
            raise UsageError(f"cannot read {file}: {exc.strerror}") from None
    else:
        text = data
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        if file is None and text.startswith("@"):  # curl's habit: --data @payload.json
            raise UsageError(f"--data takes the JSON itself, not a file: use --file {text[1:] or 'PATH'}") from None
        raise UsageError(f"payload is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise UsageError("payload is nested too deeply") from None

    async def go(rt):  # type: ignore[no-untyped-def]
        queue = await rt.queue()
        async with rt.connection() as conn:
            return await do_submit(
                conn, queue, st.settings, destination, payload,
                correlation_id=correlation_id, priority=priority, idempotency_key=idempotency_key,
            )

    result = common.with_runtime(st.settings, go)
    if as_json:
        common.print_json(result.as_json())
        return
    for d in result.distributions:
        st.console.print(f"{d['distribution_id']}  {d['destination']}")
    if result.replayed:
        st.err.print("[yellow]idempotency key seen before: these are the distributions it created[/]")
