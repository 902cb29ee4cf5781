"""``ms07 destinations``: the configured destinations, their health and circuits."""

from __future__ import annotations

import typer

from ms07.cli import common, display
from ms07.options import specs, typer_command
from ms07.read_options import DestinationsCheckOptions

app = typer.Typer(help="Destinations: list, sync, check.", no_args_is_help=True)


@app.command("list")
def list_(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Each destination with health, circuit state, pool limits and auth type (never a secret)."""
    from ms07.ops import destinations as dest_ops

    st = common.state(ctx)
    data = common.with_runtime(st.settings, dest_ops.listing, console=None if as_json else st.err)
    if as_json:
        common.print_json(data)
        return
    from rich.table import Table

    table = Table(title="destinations")
    for col in ("name", "url", "health", "circuit", "pool", "timeout", "batch", "auth"):
        table.add_column(col, overflow="fold")
    for d in data:
        colour = display.style(d["health_status"]) if d["health_status"] in ("healthy", "unhealthy") else "yellow"
        table.add_row(d["name"], d["url"], f"[{colour}]{d['health_status']}[/]", d["circuit_state"],
                      str(d["pool"]["max_connections"]), f"{d['timeout_seconds']:g}s",
                      f"{d['batch']['max_items']}" if d["batch"] else "-", d["auth"])
    st.console.print(table)


@app.command("sync")
def sync(ctx: typer.Context) -> None:
    """Write the config's destinations into the database (the engine does this at start)."""
    from ms07.ops import destinations as dest_ops

    st = common.state(ctx)
    names = common.with_runtime(st.settings, dest_ops.sync, console=st.err)
    st.console.print(f"synced {len(names)} destination(s): {', '.join(names) or 'none'}")


def check(ctx: typer.Context, names: list[str] | None, timeout: float | None, as_json: bool) -> None:
    from ms07.ops import destinations as dest_ops

    st = common.state(ctx)
    results = common.run(dest_ops.check(st.settings, names or None, timeout))
    if as_json:
        common.print_json(results)
    else:
        from rich.table import Table

        table = Table(title="destination probes")
        for col in ("name", "dns", "tcp", "http", "verdict"):
            table.add_column(col, overflow="fold")

        def cell(ms: float | None, err: str | None) -> str:
            if err:
                return f"[red]{err}[/]"
            return f"{ms:.1f} ms" if ms is not None else "-"

        for r in results:
            http = cell(r["http_ms"], r["http_error"])
            if r["http_status"] and not r["http_error"]:
                http = f"{r['http_status']} in {r['http_ms']:.1f} ms"
            verdict = "[green]ok[/]" if r["healthy"] else f"[red]failed at {r['failed_stage']}[/]"
            table.add_row(r["name"], cell(r["dns_ms"], r["dns_error"]), cell(r["tcp_ms"], r["tcp_error"]),
                          http, verdict)
        st.console.print(table)
    if any(not r["healthy"] for r in results):
        raise typer.Exit(1)


app.command("check")(
    typer_command(
        specs(DestinationsCheckOptions), check, name="check",
        help="Probe destinations live: DNS resolve, TCP connect and an authenticated GET of the health URL.",
    )
)
