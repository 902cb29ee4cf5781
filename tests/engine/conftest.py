from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from ms07.config import Settings
from ms07.engine.engine import Engine
from ms07.runtime import Runtime


@pytest.fixture
async def start_engine() -> AsyncIterator[Callable[..., Any]]:
    """Start in-process engines; every one is stopped at teardown."""
    engines: list[Engine] = []

    async def start(settings: Settings, **kwargs: Any) -> Engine:
        engine = Engine(settings, **kwargs)
        await engine.start()
        engines.append(engine)
        return engine

    yield start
    for engine in engines:
        await engine.stop(grace=1)


@pytest.fixture
async def runtime(make_settings: Callable[..., Settings]) -> AsyncIterator[Runtime]:
    rt = Runtime(make_settings(), migrate=False)
    try:
        yield rt
    finally:
        await rt.aclose()
