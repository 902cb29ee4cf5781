from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from ms07.config import Settings
from ms07.runtime import Runtime


@pytest.fixture
async def runtime(make_settings: Callable[..., Settings]) -> AsyncIterator[Runtime]:
    rt = Runtime(make_settings(), migrate=False)
    try:
        yield rt
    finally:
        await rt.aclose()
