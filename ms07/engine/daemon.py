"""``ms07 run``: the process around the engine (signals, logs, exit codes)."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
from typing import Any

from ms07 import logs
from ms07.config import Settings
from ms07.engine.engine import Engine

log = logs.get("daemon")


async def _main(settings: Settings, worker: int | None = None, sock: socket.socket | None = None) -> int:
    engine = Engine(settings)
    engine.worker_index, engine.listen_socket = worker, sock
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


def run_engine(settings: Settings, workers: int = 1) -> int:
    """Run until SIGTERM/SIGINT; 0 after a clean drain, 75 after the memory guard.

    ``workers`` > 1: a supervisor and that many engine processes on one port
    (``supervisor.py``). The loop is uvloop when installed (MS07_EVENT_LOOP=asyncio opts
    out): it cuts the engine's CPU per delivery by about a sixth (bench/throughput.py)."""
    fmt = settings.log_format
    if fmt == "auto":
        import sys

        fmt = "console" if sys.stdout.isatty() else "json"
    logs.configure(settings.log_level, fmt)
    if workers > 1:
        return _supervise(settings, workers)
    return run_loop(_main(settings))


def _supervise(settings: Settings, workers: int) -> int:
    import dataclasses

    from ms07.engine.supervisor import Supervisor
    from ms07.runtime import Runtime

    # Resolved once here: N children must not race to start the embedded servers.
    runtime = Runtime(settings, create=True)
    database_url, redis_url = runtime.database_url, runtime.redis_url
    for name, url in runtime.embedded_used.items():
        log.info(f"using embedded {name}", url=url, state_dir=str(settings.resolved_state_dir()))
    settings = dataclasses.replace(settings, database_url=database_url, redis_url=redis_url)
    return Supervisor(settings, workers, _child).run()


def _child(settings: Settings, worker: int, sock: socket.socket | None) -> int:
    """One engine of ``--workers N`` (in a fork of the supervisor)."""
    import dataclasses

    if settings.service.worker_id:
        service = dataclasses.replace(settings.service, worker_id=f"{settings.service.worker_id}-{worker}")
        settings = dataclasses.replace(settings, service=service)
    with logs.bind(worker=worker):
        return int(run_loop(_main(settings, worker, sock)))


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
