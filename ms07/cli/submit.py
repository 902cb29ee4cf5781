"""``ms07 submit``: accept distributions from the command line, like POST /distributions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from ms07.cli import common
from ms07.errors import UsageError


def submit(
    ctx: typer.Context,
    destination: list[str] = typer.Option(None, "--destination", "-d", help="Destination name (repeatable)."),
    data: str = typer.Option(None, "--data", help="The payload, as JSON text (a file: --file PATH)."),
    file: Path = typer.Option(None, "--file", help="Read the JSON payload from a file ('-' for stdin); a JSON "
                              "Lines file (.jsonl, .ndjson, or one object per line) submits one body per line."),
    correlation_id: str = typer.Option(None, "--correlation-id", help="Shared by the jobs of this submit."),
    priority: str = typer.Option(None, "--priority", help="Queue to use (default: distribution.default_priority)."),
    idempotency_key: str = typer.Option(None, "--idempotency-key",
                                        help="A repeat with the same key makes nothing new."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Submit a distribution for one or more destinations (one job each), or many at once.

    A JSON Lines file holds one submission per line, as the HTTP API takes it
    ({"destinations": [...], "payload": ..., "idempotency_key": ...}): every line is
    accepted in one commit, or none is (the error names the line)."""
    import sys

    from ms07.ops.dest_admin import settings_in_force
    from ms07.ops.submit import DirectRecorder, submit_many
    from ms07.ops.submit import submit as do_submit

    st = common.state(ctx)
    if (data is None) == (file is None):
        raise UsageError("give exactly one of --data or --file")
    if file is not None:
        try:
            text = sys.stdin.read() if str(file) == "-" else file.read_text()
        except OSError as exc:
            raise UsageError(f"cannot read {file}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise UsageError(f"cannot read {file}: not UTF-8 text") from None
        items = _json_lines(file, text)
        if items is not None:
            if destination or priority or idempotency_key:
                raise UsageError("a JSON Lines file names destinations, priority and idempotency_key on each line; "
                                 "drop --destination, --priority and --idempotency-key")

            async def many(rt):  # type: ignore[no-untyped-def]
                queue = await rt.queue()
                async with rt.connection() as conn:
                    settings = await settings_in_force(conn, st.settings)  # the database's destinations
                    return await submit_many(DirectRecorder(conn, queue), settings, [i for _, i in items],
                                             correlation_id)

            results = _by_line(lambda: common.with_runtime(st.settings, many), [n for n, _ in items])
            if as_json:
                common.print_json({"distributions": [{**r.as_json(), "replayed": r.replayed} for r in results]})
                return
            for r in results:
                for d in r.distributions:
                    st.console.print(f"{d['distribution_id']}  {d['destination']}")
            replayed = sum(r.replayed for r in results)
            if replayed:
                st.err.print(f"[yellow]{replayed} line(s) had an idempotency key seen before: shown are the "
                             "distributions it created[/]")
            return
    else:
        text = data
    if not destination:
        raise UsageError("give at least one --destination")
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
                conn, queue, await settings_in_force(conn, st.settings), destination, payload,
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


def _json_lines(file: Path, text: str) -> list[tuple[int, Any]] | None:
    """(line number, value) of each non-blank line of a JSON Lines file, or None for a
    single JSON payload. JSON Lines: a .jsonl / .ndjson name, or text that is not one JSON
    value but whose first line is a JSON object by itself."""
    if file.suffix.lower() not in (".jsonl", ".ndjson"):
        try:
            json.loads(text)
            return None
        except json.JSONDecodeError as exc:
            first = text.lstrip().split("\n", 1)[0]
            if exc.msg != "Extra data" or not first.startswith("{"):
                return None  # reported as a bad payload by the caller
            try:
                json.loads(first)
            except json.JSONDecodeError:
                return None
        except RecursionError:
            return None
    out: list[tuple[int, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise UsageError(f"{file} line {number}: not valid JSON: {exc.msg} at column {exc.colno}") from None
        except RecursionError:
            raise UsageError(f"{file} line {number}: nested too deeply") from None
    if not out:
        raise UsageError(f"{file}: no submissions (every line is blank)")
    return out


def _by_line(run: Any, numbers: list[int]) -> Any:
    """``run()``, with a refused batch's item indexes told as line numbers."""
    from ms07.ops.submit import BatchRefused

    try:
        return run()
    except BatchRefused as exc:
        (index, first), more = exc.items[0], len(exc.items) - 1
        also = f" (and {more} more line(s): {', '.join(str(numbers[i]) for i, _ in exc.items[1:6])}" \
               f"{'…' if more > 5 else ''})" if more else ""
        raise UsageError(f"line {numbers[index]}: {first}{also}; nothing was submitted") from None
