"""``ms07 runbook``: YAML runbooks (filled in later)."""

from __future__ import annotations

import typer

app = typer.Typer(help="YAML runbooks: list, show, run, export.", no_args_is_help=True)
