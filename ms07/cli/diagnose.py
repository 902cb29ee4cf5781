"""``ms07 diagnose``: the troubleshooting guide's checks (filled in by the diagnose work)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Scripted checks of the troubleshooting guide: verdict, evidence, next command.",
                  no_args_is_help=True)
