"""``ms07 destinations``: the configured destinations (filled in later)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Destinations: list, sync, check.", no_args_is_help=True)
