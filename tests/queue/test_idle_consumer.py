"""An engine is one of the group's consumers from its start, idle or not (``queue stats``)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from ms07 import keys
from tests.support import acli, wait_for


def _consumers(rc: redis.Redis) -> list[str]:
    try:
        return [c["name"] for c in rc.xinfo_consumers(keys.stream("default"), keys.GROUP)]
    except redis.ResponseError:  # no stream or no group (yet)
        return []


# The test deletes the stream under the engine (Redis losing it): a loop pass that was
# reading it then fails once and goes on, which is what the marker allows.
@pytest.mark.loop_errors_ok
async def test_an_idle_engine_counts_as_a_consumer(make_settings, start_engine, env_for: dict[str, str],
                                                   rc: redis.Redis) -> None:
    engine: Any = await start_engine(make_settings(destinations=[{"name": "a", "url": "http://127.0.0.1:9/in"}]))
    result = await acli(["queue", "stats", "--json"], env_for)
    assert result.exit_code == 0, result.output
    default = json.loads(result.output)["queues"]["default"]
    assert [c["name"] for c in default["consumers"]] == [engine.worker_id]
    assert default["group"]["consumers"] == 1
    result = await acli(["queue", "stats"], env_for)
    assert "│ default │      0 │       0 │         1 │" in result.output, result.output
    # Redis loses the stream (a restart without persistence): the engine joins again.
    rc.delete(keys.stream("default"))
    await wait_for(lambda: _consumers(rc) == [engine.worker_id], what="the engine back in the recreated group")
    await engine.stop(grace=1)
    assert _consumers(rc) == []  # it leaves the group holding nothing
