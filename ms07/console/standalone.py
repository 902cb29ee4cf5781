"""``ms07 console``: the console on its own, for when no engine is up.

It reads PostgreSQL and Redis directly (the same :class:`~ms07.runtime.Runtime` as every
other command: the configured URLs, else the embedded servers under ``MS07_STATE_DIR``),
so the pages show the same numbers as the engine's ``/console``; replays started here run
in this process and put jobs on the queue for whichever engine comes up. The same tokens
guard it, and like ``ms07 run`` it refuses to start with no token unless
``service.allow_unauthenticated: true`` (and then listens on loopback only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from ms07 import logs

if TYPE_CHECKING:
    from ms07.config import Settings

log = logs.get("console")
DEFAULT_PORT = 8081  # beside an engine on 8080


async def _root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/console/")


def build_app(settings: Settings) -> web.Application:
    """The console's pages over a runtime of their own (closed with the app)."""
    from ms07.console import data, views
    from ms07.console.security import Guard
    from ms07.engine.server import ApiToken
    from ms07.runtime import Runtime

    operator, viewer = ApiToken(settings), ApiToken(settings, read_only=True)
    logs.register_settings(settings)
    runtime = Runtime(settings, pool_size=4, migrate=False)
    app = web.Application()
    guard = Guard(lambda: (operator.current(), viewer.current()), settings.service.console_session_hours)
    views.mount(app, data.Source(settings, runtime), guard)
    app.router.add_get("/", _root)

    async def close(_: web.Application) -> None:
        await runtime.aclose()

    app.on_cleanup.append(close)
    return app


@dataclass
class Running:
    runner: web.AppRunner
    port: int

    async def close(self) -> None:
        await self.runner.cleanup()


async def start(settings: Settings, port: int, host: str | None = None) -> Running:
    """Serve on ``host:port`` (0: a free port) until :meth:`Running.close`."""
    token, default_host = settings.api_listen()  # no token and not allowed: ConfigError, one line
    runner = web.AppRunner(build_app(settings), access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host or default_host, port, reuse_address=True)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    log.info("console listening", host=host or default_host, port=bound, auth="token" if token else "none",
             url=f"http://{host or default_host}:{bound}/console/")
    return Running(runner, bound)


def run(settings: Settings, port: int) -> int:
    """Serve until SIGINT/SIGTERM; 0 after a clean stop."""
    import asyncio
    import signal

    fmt = settings.log_format if settings.log_format != "auto" else "console"
    logs.configure(settings.log_level, fmt)

    async def main() -> None:
        running = await start(settings, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await running.close()

    asyncio.run(main())
    return 0
