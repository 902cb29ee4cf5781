"""``ms07 queue``: the Redis work queue: stats, backup, restore."""

from __future__ import annotations

from pathlib import Path

import typer

from ms07.cli import common
from ms07.options import specs, typer_command
from ms07.read_options import QueueStatsOptions

app = typer.Typer(help="The Redis work queue: stats, backup, restore.", no_args_is_help=True)


def stats(ctx: typer.Context, as_json: bool) -> None:
    st = common.state(ctx)

    async def go(rt):  # type: ignore[no-untyped-def]
        return await (await rt.queue()).stats()

    data = common.with_runtime(st.settings, go, console=None if as_json else st.err)
    if as_json:
        common.print_json(data)
        return
    from rich.table import Table

    table = Table(title="queues")
    for col in ("queue", "length", "pending", "consumers", "delayed", "overdue", "oldest pending idle"):
        table.add_column(col, justify="right" if col != "queue" else "left")
    for name, q in data["queues"].items():
        idle = q.get("oldest_pending_idle_ms")
        table.add_row(
            name,
            str(q["length"]),
            str(q["pending"]),
            str(len(q["consumers"])),
            str(q["delayed"]),
            str(q["delayed_overdue"]),
            f"{idle / 1000:.1f}s" if idle is not None else "-",
        )
    st.console.print(table)
    st.console.print(f"DLQ: {data['dlq']} entries")


def _progress(total: int, label: str):  # type: ignore[no-untyped-def]
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    return Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), transient=True, disable=total < 5000
    )


app.command("stats")(
    typer_command(
        specs(QueueStatsOptions), stats, name="stats",
        help="Depth, pending, consumers, delayed and DLQ sizes of every queue stream.",
    )
)


@app.command("backup")
def backup(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="JSONL file to write (verified after writing)."),
    include_dlq: bool = typer.Option(False, "--include-dlq", help="Also back up the DLQ stream."),
    no_delayed: bool = typer.Option(False, "--no-delayed", help="Leave out the delayed retries."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Write every entry (id and fields) of every queue stream to FILE, then verify it."""
    from ms07.ops import backup as bk

    st = common.state(ctx)

    async def go(rt):  # type: ignore[no-untyped-def]
        queue = await rt.queue()
        stats = await queue.stats()
        total = stats["total_length"] + (0 if no_delayed else stats["total_delayed"])
        with _progress(total, "backing up") as progress:
            task = progress.add_task("backup", total=total)
            return await bk.backup(
                queue,
                file,
                include_delayed=not no_delayed,
                include_dlq=include_dlq,
                progress=lambda n: progress.advance(task, n),
            )

    result = common.with_runtime(st.settings, go, console=None if as_json else st.err)
    if as_json:
        common.print_json(result.summary())
    else:
        st.console.print(f"backed up {result.count} entries to {result.path} (verified, sha256 {result.sha256[:12]})")


@app.command("restore")
def restore(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="A file written by `ms07 queue backup`."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Put every entry of a verified backup back into the queue."""
    from ms07.ops import backup as bk

    st = common.state(ctx)
    verified = bk.verify(file)

    async def go(rt):  # type: ignore[no-untyped-def]
        queue = await rt.queue()
        with _progress(verified.count, "restoring") as progress:
            task = progress.add_task("restore", total=verified.count)
            return await bk.restore(queue, file, progress=lambda n: progress.advance(task, n))

    result = common.with_runtime(st.settings, go, console=None if as_json else st.err)
    if as_json:
        common.print_json(result.__dict__)
    else:
        st.console.print(
            f"restored {result.restored} entries from {file}"
            + (f" ({result.skipped_existing} already present)" if result.skipped_existing else "")
        )
