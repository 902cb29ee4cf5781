"""``python -m ms07.cli.docs [FILE] [--check]``: the CLI reference (docs/cli.md), rendered
from the Typer app itself so it cannot drift from the code.

It walks the same command objects ``--help`` prints, and uses each parameter's own help
record (names, type, default, range, ``[env var: ...]``, required), so nothing depends on
the terminal: no width, no colours. Typer's ``utils docs`` renders the same objects, but
cuts each command's summary at 45 characters and writes HTML entities into the file.
``tests/test_docs.py`` fails when the committed file differs from this output.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import typer

_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")
REGENERATE = "python -m ms07.cli.docs docs/cli.md"
# A backslash at the end of a line inside HEADER joins it to the next: a Markdown table row
# cannot wrap, the source line can.
HEADER = f"""# CLI reference

<!-- Generated from the Typer app by `{REGENERATE}`; do not edit by hand. -->

Every command takes `-h` / `--help`, which prints the same information. The options of
`ms07` itself are listed under [`ms07`](#ms07). Environment variables and configuration
keys: [configuration.md](configuration.md).

Exit codes (ms07/errors.py): **0** done, **1** failed, **2** bad usage, configuration or
runbook, **3** a dependency (PostgreSQL, Redis, the engine) out of reach, **4** not found,
**5** a queue backup could not be written or verified, **130** interrupted (Ctrl-C). Some
commands say more with their code:

| command | exit codes |
|---|---|
| `ms07 run` | 0 after a clean drain, 75 after the memory guard drained it (restart it), 2 bad configuration |
| `ms07 diagnose ...` | the monitoring-plugins convention: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (could not check) |
| `ms07 health` | 0 healthy, 1 degraded, 2 unhealthy, 3 unreachable or no verdict |
| `ms07 recover ...` | 0 done, 1 failed, blocked or not confirmed, 2 bad usage, 130 interrupted |
| `ms07 runbook run` | 0 completed (or dry run), 1 a step failed or was not confirmed, 2 invalid runbook or usage, \
4 no such runbook, 130 interrupted |
"""


def _plain(text: str | None, rich: bool) -> str:
    """Help text as plain Markdown: Rich markup (``\\[env: X]`` escapes) resolved, and a
    ``<`` before a letter escaped so that ``<time>`` is not taken for an HTML tag."""
    text = text or ""
    if rich and text:
        from rich.errors import MarkupError
        from rich.text import Text

        try:
            text = Text.from_markup(text).plain
        except MarkupError:
            pass
    return _TAG_START.sub(r"\\<", text)


def _summary(cmd: Any, rich: bool) -> str:
    return _plain(cmd.get_short_help_str(limit=1000), rich).strip()


def _params(cmd: Any, ctx: Any, rich: bool) -> tuple[list[str], list[str]]:
    args: list[str] = []
    opts: list[str] = []
    help_names = set(ctx.help_option_names)
    for param in cmd.get_params(ctx):
        if getattr(param, "hidden", False) or help_names & set(getattr(param, "opts", [])):
            continue
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, extra = record
        own = getattr(param, "help", None) or ""
        # The record is the parameter's help plus "[default: ...; env var: ...]": only the
        # help itself is Rich markup (the bracketed tail would read as a markup tag).
        if own and extra.startswith(own):
            extra = _plain(own, rich) + _plain(extra[len(own):], False)
        else:
            extra = _plain(extra, False)
        extra = extra.strip()
        line = f"* `{names}`" + (f": {extra}" if extra else "")
        (args if param.param_type_name == "argument" else opts).append(line)
    return args, opts


def _render(cmd: Any, ctx: Any, path: str, depth: int, rich: bool, out: list[str]) -> None:
    # ms07 and its commands are sections (##), the commands of a group subsections (###).
    out.append(f"{'#' * min(2 + max(depth - 1, 0), 6)} `{path}`\n")
    if cmd.help:
        out.append(_plain(cmd.help, rich).strip() + "\n")
    if cmd.deprecated:
        out.append("*Deprecated.*\n")
    out.append(f"```\n{path} {' '.join(cmd.collect_usage_pieces(ctx))}\n```\n")
    args, opts = _params(cmd, ctx, rich)
    if args:
        out.append("Arguments:\n\n" + "\n".join(args) + "\n")
    if opts:
        out.append("Options:\n\n" + "\n".join(opts) + "\n")
    if cmd.epilog:
        out.append(_plain(cmd.epilog, rich).strip() + "\n")
    subcommands = _subcommands(cmd, ctx)
    if subcommands:
        rows = [f"| [`{path} {name}`](#{_anchor(f'{path} {name}')}) | {_summary(sub, rich)} |"
                for name, sub in subcommands]
        out.append("| command | what it does |\n|---|---|\n" + "\n".join(rows) + "\n")
        for name, sub in subcommands:
            sub_ctx = typer.Context(sub, info_name=name, parent=ctx)
            _render(sub, sub_ctx, f"{path} {name}", depth + 1, rich, out)


def _subcommands(cmd: Any, ctx: Any) -> list[tuple[str, Any]]:
    if not hasattr(cmd, "list_commands"):
        return []
    found = [(name, cmd.get_command(ctx, name)) for name in cmd.list_commands(ctx)]
    return [(name, sub) for name, sub in found if sub is not None and not sub.hidden]


def _anchor(title: str) -> str:
    """GitHub's heading anchor of ``## `title` ``: lower case, spaces to dashes."""
    return "".join(c for c in title.lower().replace(" ", "-") if c.isalnum() or c in "-_")


def render() -> str:
    """The whole reference, as committed in docs/cli.md."""
    from ms07.cli import app

    rich = getattr(app, "rich_markup_mode", None) == "rich"
    root = typer.main.get_command(app)
    ctx = typer.Context(root, info_name="ms07")
    out = [HEADER]
    _render(root, ctx, "ms07", 0, rich, out)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ms07.cli.docs", description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", help="write here (default: stdout)")
    parser.add_argument("--check", action="store_true", help="exit 1 if FILE differs from the output")
    ns = parser.parse_args(argv)
    text = render()
    if ns.check:
        if not ns.file:
            parser.error("--check needs FILE")
        current = Path(ns.file).read_text(encoding="utf-8") if Path(ns.file).exists() else ""
        if current != text:
            sys.stderr.write(f"{ns.file} is stale: run `{REGENERATE}`\n")
            return 1
        return 0
    if ns.file:
        Path(ns.file).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
