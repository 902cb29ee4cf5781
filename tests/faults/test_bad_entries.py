"""Bad stream entries, property-based: the parser never raises anything but
InvalidMessage, and whatever field map lands in the stream ends in the DLQ with its reason
while the worker goes on delivering."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ms07 import keys
from ms07.queue import InvalidMessage, parse_entry
from tests.support import Sink, destination, wait_for

pytestmark = pytest.mark.faults

anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
ids = st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda u: u.hex),
    st.uuids().map(lambda u: "{" + str(u) + "}"),
    st.uuids().map(lambda u: str(u).upper() + " "),
    st.text(max_size=80),
)


@settings(max_examples=300, deadline=None)
@given(fields=st.one_of(st.dictionaries(st.text(max_size=10) | st.just("id"), ids | st.text(), max_size=4),
                        st.dictionaries(st.just("id"), anything, min_size=1), anything))
def test_parse_entry_returns_a_uuid_or_says_why_not(fields: Any) -> None:
    try:
        did = parse_entry(fields)
    except InvalidMessage as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert str(uuid.UUID(did)) == did


field_names = st.one_of(st.just(b"id"), st.just(b"destination"), st.binary(max_size=12),
                        st.text(max_size=12).map(str.encode))
field_values = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64).map(str.encode),
    ids.map(str.encode),
    st.just(b""),
    st.just(b"\xff\xfe\x00invalid utf-8"),
    st.binary(min_size=4096, max_size=4096),
)
field_maps = st.dictionaries(field_names, field_values, min_size=1, max_size=6)


async def test_random_entries_end_in_the_dlq_and_the_worker_goes_on(make_settings, sink: Sink, start_engine,
                                                                    redis_url) -> None:
    engine = await start_engine(make_settings(destinations=[destination("a", sink.url("/in"))]))
    stream = keys.stream("default")
    added: list[dict[bytes, bytes]] = []

    def add_random_entries() -> None:
        client = redis.Redis.from_url(redis_url)

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(fields=field_maps)
        def xadd(fields: dict[bytes, bytes]) -> None:
            client.xadd(stream, fields)
            added.append(fields)

        try:
            xadd()
        finally:
            client.close()

    await asyncio.to_thread(add_random_entries)

    async def drained() -> bool:
        info = await engine.queue.redis.xpending(stream, keys.GROUP)
        return await engine.queue.redis.xlen(stream) == 0 and info["pending"] == 0

    await wait_for(drained, timeout=30, what="every random entry handled")
    dlq = await engine.queue.dlq_entries(count=1000)
    assert len(dlq) == len(added)
    assert {f["reason"] for _, f in dlq} == {"unprocessable_entry"}
    assert {f["error_code"] for _, f in dlq} <= {"INVALID_MESSAGE", "MESSAGE_NOT_FOUND"}
    assert all(f["last_error"] and "\n" not in f["last_error"] for _, f in dlq)
    assert engine._reader is not None and not engine._reader.done()  # the reader is alive
    # ... and still delivers.
    from ms07.ops.submit import submit

    async with engine.pool.connection() as conn:
        did = (await submit(conn, engine.queue, engine.settings, ["a"], {"after": "chaos"})).distributions[0]
    await wait_for(lambda: did["distribution_id"] in sink.unique_keys("/in"), what="a good one delivered after")
