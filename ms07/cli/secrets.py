"""``ms07 secrets``: the encryption of destination secrets stored in PostgreSQL."""

from __future__ import annotations

import typer

from ms07.cli import common

app = typer.Typer(help="Secrets stored encrypted in PostgreSQL: rekey.", no_args_is_help=True)


@app.command("rekey")
def rekey(ctx: typer.Context,
          dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be re-encrypted; change nothing."),
          yes: bool = typer.Option(False, "--yes", help="Re-encrypt (audited)."),
          as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Re-encrypt every stored destination secret with the first key of MS07_SECRET_KEY.

    Rotate a key: put the new key first in MS07_SECRET_KEY, keep the old one after it, roll
    the engines, run this, then drop the old key. A secret no listed key decrypts is one
    error line naming its destination, and nothing is changed."""
    from ms07.errors import UsageError
    from ms07.ops import dest_admin
    from ms07.recover.audit import operator

    if dry_run == yes:
        raise UsageError("give --dry-run to see what would be re-encrypted, or --yes to do it")
    st = common.state(ctx)

    async def main(rt: object) -> object:
        async with rt.connection() as conn:  # type: ignore[attr-defined]
            return await dest_admin.rekey(conn, operator=operator(), dry_run=dry_run)

    out = common.with_runtime(st.settings, main, console=None if as_json else st.err)
    assert isinstance(out, dict)  # nosec B101 - narrows a type
    if as_json:
        common.print_json(out)
        return
    done = out["reencrypted"]
    for name, fields in done.items():
        st.console.print(f"{name}: {', '.join(fields)}", markup=False)
    verb = "would be re-encrypted" if dry_run else "re-encrypted"
    st.console.print(f"{sum(len(f) for f in done.values())} secret(s) {verb} with key {out['key']}", markup=False)
