"""``ms07 recover``: the guide's recovery procedures as reviewable plans (filled in later)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Recovery procedures as reviewed, verified, audited plans.", no_args_is_help=True)
