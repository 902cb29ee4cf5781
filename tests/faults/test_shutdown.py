"""Stopping never hangs on a loop whose cancellation a library swallowed."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest

from ms07.engine import upkeep

pytestmark = pytest.mark.faults


async def test_an_upkeep_loop_stops_even_if_its_cancellation_was_swallowed() -> None:
    async def swallows_cancel(engine: Any) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass  # what a redis-py command caught in the wrong moment does (redis-py#2028)

    engine = SimpleNamespace(loop_errors=Counter(), loops_stopping=False)  # the cancel alone must do
    task = asyncio.create_task(upkeep._forever(engine, "scheduler", 0.01, swallows_cancel))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=2)
    assert done and task.cancelled(), "the loop ran on after its cancellation (Engine.stop() would hang)"
