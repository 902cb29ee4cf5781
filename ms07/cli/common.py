"""What every command shares: settings, the consoles, output helpers (hatch style)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from functools import cached_property
from typing import Any, TypeVar

import typer
from rich.console import Console

from ms07.config import Settings, load_settings

T = TypeVar("T")

# Environment variables are read by ms07.config's overlay alone (for every command alike),
# never by a Typer ``envvar``: an option given on the command line overrides them.
CONFIG_OPTION = typer.Option(None, "--config", "-c", help="YAML config file \\[env: MS07_CONFIG]")


class State:
    """Per-invocation state: where the config is, the settings (loaded on first use)."""

    def __init__(self, config: str | None = None, log_level: str | None = None) -> None:
        self.config = config
        self.log_level = log_level
        self.console = Console(highlight=False, soft_wrap=False)
        self.err = Console(stderr=True, highlight=False)

    @cached_property
    def settings(self) -> Settings:
        overrides: dict[str, Any] = {}
        if self.log_level:
            overrides["log_level"] = self.log_level
        return load_settings(self.config, **overrides)


def state(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    if not isinstance(obj, State):
        obj = State()
        ctx.find_root().obj = obj
    return obj


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def say_sources(console: Console | None, settings: Settings) -> None:
    """One dim line on stderr naming the PostgreSQL and Redis a command reads (no password),
    so a shell pointed at the wrong state directory or URL shows it at once."""
    if console is not None:
        from ms07.runtime import sources

        console.print(f"[dim]reading {sources(settings)}[/]", soft_wrap=True)


def with_runtime(settings: Settings, fn: Callable[[Any], Awaitable[T]], *, console: Console | None = None,
                 **kwargs: Any) -> T:
    """Run ``fn(runtime)`` in a fresh loop with a Runtime that is closed afterwards.

    The Runtime attaches to running servers and refuses a database without the schema
    unless ``create=True`` (only ``ms07 db migrate`` passes it; ``ms07 run`` and ``ms07
    embedded start`` have their own paths). ``console``: where to say which servers."""
    from ms07.runtime import Runtime

    async def main() -> T:
        async with Runtime(settings, **kwargs) as rt:
            return await fn(rt)

    result = asyncio.run(main())
    # Said once the data is in, before it is shown; an error names its server itself and
    # stays one line.
    say_sources(console, settings)
    return result


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, default=str, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def no_color() -> bool:
    return bool(os.environ.get("NO_COLOR"))
