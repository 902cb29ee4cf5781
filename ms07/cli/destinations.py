"""``ms07 destinations``: the configured destinations, their health and circuits."""

from __future__ import annotations

import typer

from ms07.cli import common, display
from ms07.options import specs, typer_command
from ms07.read_options import DestinationsCheckOptions

app = typer.Typer(help="Destinations: list, sync, check; add, edit, pause, resume, remove, apply.",
                  no_args_is_help=True)


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
        table.add_row(d["name"] + (" (paused)" if d.get("paused") else ""), d["url"],
                      f"[{colour}]{d['health_status']}[/]", d["circuit_state"],
                      str(d["pool"]["max_connections"]), f"{d['timeout_seconds']:g}s",
                      f"{d['batch']['max_items']}" if d["batch"] else "-", d["auth"])
    st.console.print(table)


@app.command("sync")
def sync(ctx: typer.Context) -> None:
    """Apply the config's destinations to the database (added and changed; none removed)."""
    from ms07.ops import destinations as dest_ops

    st = common.state(ctx)
    names = common.with_runtime(st.settings, dest_ops.sync, console=st.err)
    st.console.print(f"synced {len(names)} destination(s): {', '.join(names) or 'none'}")


def check(ctx: typer.Context, names: list[str] | None, timeout: float | None, as_json: bool) -> None:
    from ms07.ops import destinations as dest_ops

    st = common.state(ctx)
    results = common.run(dest_ops.check_in_force(st.settings, names or None, timeout))
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


# ------------------------------------------------------------------ runtime changes

DRY_RUN = typer.Option(False, "--dry-run", help="Show what would change; change nothing.")
YES = typer.Option(False, "--yes", help="Make the change (audited).")


def _mode(dry_run: bool, yes: bool) -> None:
    from ms07.errors import UsageError

    if dry_run == yes:
        raise UsageError("give --dry-run to see what would change, or --yes to change it")


def _change(ctx: typer.Context, fn: object, as_json: bool, **kwargs: object) -> object:
    """Run ``fn(conn, ...)`` of ms07.ops.dest_admin on the database, as the operator."""
    from ms07.recover.audit import operator

    st = common.state(ctx)

    async def main(rt: object) -> object:
        async with rt.connection() as conn:  # type: ignore[attr-defined]
            return await fn(conn, operator=operator(), **kwargs)  # type: ignore[operator]

    return common.with_runtime(st.settings, main, console=None if as_json else st.err)


def _read_mapping(path: str) -> object:
    from pathlib import Path

    from ms07.config import parse_yaml
    from ms07.errors import UsageError

    try:
        text = Path(path).expanduser().read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    return parse_yaml(text, path)


@app.command("apply")
def apply_(
    ctx: typer.Context,
    file: str = typer.Option(..., "--file", "-f", help="YAML with a destinations: list (a config file will do)."),
    prune: bool = typer.Option(False, "--prune", help="Also remove destinations the file no longer lists."),
    dry_run: bool = DRY_RUN, yes: bool = YES,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Make the database's destinations what FILE says, like kubectl apply: the diff
    (added, changed with the keys, removed with --prune; secret references shown only as
    changed), then with --yes the change, in one transaction. A bad file changes nothing."""
    from ms07 import destspec
    from ms07.ops import dest_admin

    _mode(dry_run, yes)
    st = common.state(ctx)
    wanted = destspec.parse_file(st.settings, file)
    plan = _change(ctx, dest_admin.apply, as_json, settings=st.settings, wanted=wanted, prune=prune,
                   dry_run=dry_run, command=f"ms07 destinations apply -f {file}" + (" --prune" if prune else ""))
    assert isinstance(plan, destspec.Diff)  # nosec B101 - narrows a type
    if as_json:
        common.print_json({**plan.as_dict(), "applied": yes and not plan.empty})
        return
    for line in plan.lines():
        st.console.print(line, markup=False)
    if plan.empty:
        st.console.print(f"no change ({len(plan.unchanged)} destination(s) as the file says)")
    elif dry_run:
        st.console.print("nothing changed (dry run); run again with --yes to apply")
    else:
        st.console.print(f"applied: {len(plan.added)} added, {len(plan.changed)} changed, {len(plan.removed)} removed")


@app.command("add")
def add(ctx: typer.Context,
        file: str = typer.Option(..., "--file", "-f", help="One destination (YAML or JSON mapping)."),
        dry_run: bool = DRY_RUN, yes: bool = YES,
        as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Add one destination, validated exactly as the config's; live on every engine within a second."""
    from ms07.ops import dest_admin

    _mode(dry_run, yes)
    st = common.state(ctx)
    out = _change(ctx, dest_admin.add, as_json, settings=st.settings, raw=_read_mapping(file), dry_run=dry_run,
                  source=file)
    _say(st, out, as_json, "added" if yes else "valid (dry run); run again with --yes to add")


@app.command("edit")
def edit(ctx: typer.Context, name: str = typer.Argument(..., help="Destination."),
         file: str = typer.Option(None, "--file", "-f",
                                  help="A merge patch (YAML or JSON mapping; null unsets a key)."),
         set_: list[str] = typer.Option(None, "--set", help="KEY=VALUE (dotted keys, YAML values), repeatable."),
         dry_run: bool = DRY_RUN, yes: bool = YES,
         as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Change a destination: the keys of a merge patch (-f) or --set KEY=VALUE; the whole
    result is validated as the config's. Shows the keys that change."""
    from ms07.errors import UsageError
    from ms07.ops import dest_admin

    _mode(dry_run, yes)
    patch: dict[str, object] = {}
    if file:
        loaded = _read_mapping(file)
        if not isinstance(loaded, dict):
            raise UsageError(f"{file}: the change must be a mapping")
        patch.update(loaded)
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {item!r}: write KEY=VALUE")
        import yaml

        node: dict[str, object] = patch
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})  # type: ignore[assignment]
        node[last] = yaml.safe_load(value) if value else None
    if not patch:
        raise UsageError("nothing to change: give -f FILE or --set KEY=VALUE")
    st = common.state(ctx)
    out = _change(ctx, dest_admin.edit, as_json, settings=st.settings, name=name, patch=patch, dry_run=dry_run,
                  source="change")
    assert isinstance(out, dict)  # nosec B101 - narrows a type
    if as_json:
        common.print_json(out)
        return
    keys = out.get("changed") or []
    st.console.print(f"{name}: " + (", ".join(keys) if keys else "no change"), markup=False)
    if keys:
        st.console.print("changed" if yes else "nothing changed (dry run); run again with --yes to change it")


def _pause(ctx: typer.Context, name: str, paused: bool, reason: str | None, dry_run: bool, yes: bool,
           as_json: bool) -> None:
    from ms07.ops import dest_admin

    _mode(dry_run, yes)
    st = common.state(ctx)
    out = _change(ctx, dest_admin.pause, as_json, name=name, paused=paused, reason=reason, dry_run=dry_run)
    assert isinstance(out, dict)  # nosec B101 - narrows a type
    if as_json:
        common.print_json(out)
        return
    verb = "paused" if paused else "resumed"
    if dry_run:
        st.console.print(f"{name}: would be {verb} ({out['held']} held job(s)); run again with --yes",
                         markup=False)
    elif out["changed"]:
        st.console.print(f"{name}: {verb}" + ("" if paused else f"; {out['held']} held job(s) are released"),
                         markup=False)
    else:
        st.console.print(f"{name}: already {verb}", markup=False)


@app.command("pause")
def pause(ctx: typer.Context, name: str = typer.Argument(..., help="Destination."),
          reason: str = typer.Option(None, "--reason", help="Why (shown by list and diagnose)."),
          dry_run: bool = DRY_RUN, yes: bool = YES,
          as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Pause a destination: submissions are still accepted and held (status paused), nothing is sent."""
    _pause(ctx, name, True, reason, dry_run, yes, as_json)


@app.command("resume")
def resume(ctx: typer.Context, name: str = typer.Argument(..., help="Destination."),
           dry_run: bool = DRY_RUN, yes: bool = YES,
           as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Resume a destination: its held jobs are released at service.resume_rate_per_second per engine."""
    _pause(ctx, name, False, None, dry_run, yes, as_json)


@app.command("remove")
def remove(ctx: typer.Context, name: str = typer.Argument(..., help="Destination."),
           open_: str = typer.Option(None, "--open", help="What becomes of its unfinished jobs: dead (park them "
                                     "in the DLQ). Without it a destination with unfinished jobs is not removed."),
           dry_run: bool = DRY_RUN, yes: bool = YES,
           as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Remove a destination; refused while it has unfinished jobs unless --open dead."""
    from ms07.ops import dest_admin

    _mode(dry_run, yes)
    st = common.state(ctx)

    async def main(rt: object) -> object:
        from ms07.recover.audit import operator

        async with rt.connection() as conn:  # type: ignore[attr-defined]
            return await dest_admin.remove(conn, await rt.queue(), name, open_action=open_,  # type: ignore[attr-defined]
                                           operator=operator(), dry_run=dry_run)

    out = common.with_runtime(st.settings, main, console=None if as_json else st.err)
    assert isinstance(out, dict)  # nosec B101 - narrows a type
    if as_json:
        common.print_json(out)
    elif dry_run:
        st.console.print(f"{name}: would be removed ({out['unfinished']} unfinished job(s)); run again with --yes",
                         markup=False)
    else:
        st.console.print(f"{name}: removed" + (f"; {out['parked']} job(s) parked in the DLQ" if out["parked"] else ""),
                         markup=False)


@app.command("rotate-secret")
def rotate_secret(ctx: typer.Context, name: str = typer.Argument(..., help="Destination."),
                  keep_previous: str = typer.Option("24h", "--keep-previous",
                                                    help="How long the old secret keeps signing too: 90s, 30m, 24h."),
                  secret_file: str = typer.Option(None, "--secret-file",
                                                  help="The new secret, from this file (default: a new whsec_ one)."),
                  dry_run: bool = DRY_RUN, yes: bool = YES,
                  as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Rotate a destination's signing secret: the new one is stored encrypted, the old one
    keeps signing beside it (both signatures sent) for --keep-previous, then is dropped."""
    from pathlib import Path

    from ms07.diagnose.options import parse_duration
    from ms07.errors import UsageError
    from ms07.ops import dest_admin

    _mode(dry_run, yes)
    seconds = parse_duration(keep_previous, "--keep-previous")
    secret = None
    if secret_file:
        try:
            secret = Path(secret_file).expanduser().read_text().strip()
        except OSError as exc:
            raise UsageError(f"cannot read {secret_file}: {exc.strerror}") from None
    st = common.state(ctx)
    out = _change(ctx, dest_admin.rotate_signing, as_json, settings=st.settings, name=name, secret=secret,
                  keep_previous=seconds, dry_run=dry_run)
    assert isinstance(out, dict)  # nosec B101 - narrows a type
    if as_json:
        common.print_json(out)
    elif dry_run:
        st.console.print(f"{name}: would rotate its signing secret (the old one signs too for {keep_previous}); "
                         "run again with --yes", markup=False)
    else:
        fp = out["secrets"]["signing.secret"]["fingerprint"]
        st.console.print(f"{name}: new signing secret {fp}; the previous one signs too until "
                         f"{out['secrets']['signing.previous_secret'].get('expires_at')}", markup=False)


def _say(st: common.State, out: object, as_json: bool, message: str) -> None:
    if as_json:
        common.print_json(out)
    else:
        name = out.get("name") if isinstance(out, dict) else "?"
        st.console.print(f"{name}: {message}", markup=False)
