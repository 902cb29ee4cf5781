"""``ms07 run``: the process around the engine (signals, logs, exit codes)."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from typing import Any

from ms07 import logs
from ms07.config import Settings
from ms07.engine.engine import Engine

log = logs.get("daemon")


async def _main(settings: Settings) -> int:
    engine = Engine(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, engine.request_stop, sig.name)
    try:
        _ = engine.runtime.database_url, engine.runtime.redis_url
        for name, url in engine.runtime.embedded_used.items():
            log.info(f"using embedded {name}", url=url, state_dir=str(settings.resolved_state_dir()))
        await engine.start()
        _tune_gc()
        return await engine.serve()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def run_engine(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; 0 after a clean drain, 75 after the memory guard.

    The loop is uvloop when installed (MS07_EVENT_LOOP=asyncio opts out): it cuts the
    engine's CPU per delivery by about a sixth (bench/throughput.py)."""
    fmt = settings.log_format
    if fmt == "auto":
        import sys

        fmt = "console" if sys.stdout.isatty() else "json"
    logs.configure(settings.log_level, fmt)
    return run_loop(_main(settings))


def _tune_gc() -> None:
    """Keep the cyclic GC off the delivery path (MS07_GC_FREEZE=0 opts out).

    Once the engine has started, everything alive (modules, clients, pools: most of the
    heap, none of it garbage) moves to the permanent generation, so a full collection no
    longer walks it; and a young collection runs every 20,000 allocations instead of 700,
    so the objects of one delivery mostly die by refcount before any collection sees them.
    Measured over 20,000 deliveries (bench/compare.py's drain): GC time fell from ~860 ms
    of CPU (ten full collections of ~60 ms each, paused loop included) to under 10 ms.
    The other side: a quiet engine can go hours without a young collection, so cyclic
    garbage is collected by the memory loop instead (upkeep.collect_cycles)."""
    if os.environ.get("MS07_GC_FREEZE", "1") == "0":
        return
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


def run_loop(coro: Any) -> Any:
    if os.environ.get("MS07_EVENT_LOOP", "uvloop") == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)
