"""Run checks: one, several or all, concurrently, sharing one set of connections."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from ms07.config import Settings
from ms07.diagnose import auth, errors, health, latency, memory, queue, timeouts
from ms07.diagnose.context import Context
from ms07.diagnose.model import CheckResult, Report
from ms07.diagnose.options import DiagnoseOptions
from ms07.logs import clip
from ms07.runtime import Runtime

CheckFn = Callable[[Context], Awaitable[CheckResult]]

# The guide's order (docs/architecture.md, "Guide procedures"): its five problems, then the
# engine's own health report; ``errors`` (why attempts fail, whatever the cause) sits with
# the failures it explains.
CHECKS: dict[str, CheckFn] = {
    "timeouts": timeouts.check,
    "latency": latency.check,
    "auth": auth.check,
    "errors": errors.check,
    "queue": queue.check,
    "memory": memory.check,
    "health": health.check,
}


async def _run_one(name: str, ctx: Context) -> CheckResult:
    t0 = time.perf_counter()
    try:
        result = await CHECKS[name](ctx)
    except Exception as exc:  # a bug must not cost the other checks their verdict
        result = CheckResult(name)
        result.add("failed", "warning", f"the {name} check failed: {type(exc).__name__}", clip(str(exc), 300),
                   "report this as a bug in ms07 diagnose, with the evidence", unknown=True)
    # Worst first, then what it stops (nothing delivers > a destination is down); parts
    # keep their order otherwise.
    result.findings.sort(key=lambda f: f.order)
    result.duration_ms = round((time.perf_counter() - t0) * 1000, 1)
    return result


async def run_checks_async(
    settings: Settings,
    names: Sequence[str] | None = None,
    options: DiagnoseOptions | None = None,
    *,
    runtime: Runtime | None = None,
) -> Report:
    """Run the named checks (default: all) concurrently and return their report.

    ``runtime`` lets a caller (the engine, a test) share its connections; otherwise
    PostgreSQL and Redis are opened on first use and closed at the end.
    """
    names = list(names or CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; choose from {list(CHECKS)}")
    ctx = Context(settings, options or DiagnoseOptions.from_settings(settings), runtime)
    try:
        await _destinations_in_force(ctx)
        results = await asyncio.gather(*(_run_one(n, ctx) for n in names))
    finally:
        await ctx.aclose()
    return Report(list(results))


async def _destinations_in_force(ctx: Context) -> None:
    """The checks judge the destinations PostgreSQL holds, not only the
    config's; with PostgreSQL out of reach the config's list stands (the checks that
    need PostgreSQL say it is out of reach)."""
    from ms07.ops.dest_admin import settings_in_force

    try:
        async with ctx.connection() as conn:
            # No schema (or one before 0004): the checks themselves say what to do.
            cur = await conn.execute("SELECT 1 FROM information_schema.columns"
                                     " WHERE table_name = 'destinations' AND column_name = 'spec'")
            if await cur.fetchone() is not None:
                ctx.settings = await settings_in_force(conn, ctx.settings)
    except Exception:  # noqa: S110 - reported by the checks themselves  # nosec B110
        pass


async def run_check_async(
    settings: Settings, name: str, options: DiagnoseOptions | None = None, *, runtime: Runtime | None = None
) -> CheckResult:
    return (await run_checks_async(settings, [name], options, runtime=runtime)).results[0]


def run_checks(
    settings: Settings, names: Sequence[str] | None = None, options: DiagnoseOptions | None = None
) -> Report:
    """Synchronous :func:`run_checks_async` (its own event loop), for the CLI and runbooks."""
    return asyncio.run(run_checks_async(settings, names, options))


def run_check(settings: Settings, name: str, options: DiagnoseOptions | None = None) -> CheckResult:
    return run_checks(settings, [name], options).results[0]
