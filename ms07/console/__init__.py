"""The operator console: HTML pages under ``/console`` over the engine's state, its
history and the everyday actions (docs/console.md).

``ms07 run`` mounts it on the engine's HTTP server (:func:`mount_engine`); ``ms07
console`` serves it on its own, reading PostgreSQL and Redis directly
(``ms07/console/standalone.py``). ``security.py`` is the guard, ``data.py`` the reads,
``views.py`` the pages; ``templates/`` and ``static/`` ship inside the package (uPlot
vendored under ``static/vendor/``), so nothing is fetched at install or at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web

    from ms07.engine.engine import Engine


def mount_engine(app: web.Application, engine: Engine, operator: Any, viewer: Any) -> None:
    """Serve the console on the engine's server; ``operator`` and ``viewer`` are the
    API's token holders (``server.ApiToken``), so a rotated token file counts here too."""
    from ms07.console import data, views
    from ms07.console.security import Guard

    guard = Guard(lambda: (operator.current(), viewer.current()), engine.settings.service.console_session_hours)
    views.mount(app, data.Source(engine.settings, engine.runtime, engine), guard)
