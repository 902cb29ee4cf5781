"""Bad input to the submit API and to ``ms07 submit``, property-based: every refusal is a
4xx JSON error or one ``error:`` line with exit code 2, never a crash, and a refused
submit writes nothing (no job row, no stream entry)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ms07 import keys
from tests.support import Sink, check_response, cli, destination, write_config

pytestmark = pytest.mark.faults

STREAM = keys.stream("default")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
names = st.sampled_from(["a", "small", "nope", "", "A", "a ", "../a", "a\x00"]) | st.text(max_size=12)
# Strings Postgres text columns refuse (NUL) or that need care (controls, surrogates).
odd = st.sampled_from(["k\x00", "\x00", "a\nb", "\ud800", "\u202e", " ", "x" * 201])
keys_ = st.text(max_size=250) | odd
deep = st.integers(min_value=1, max_value=200_000).map(lambda n: "[" * n + "]" * n)


def _nested(n: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(n):
        value = [value]
    return value


nested = st.integers(min_value=1, max_value=900).map(_nested)


def body_fields() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "destinations": st.lists(names, max_size=3) | json_values,
            "payload": json_values | st.text(min_size=100, max_size=300) | nested,
            "correlation_id": keys_ | json_values,
            "priority": st.sampled_from(["default", "high", "", "default\x00"]) | json_values,
            "idempotency_key": keys_ | json_values,
            "extra": json_values,
        },
    )


def one_bad_field() -> st.SearchStrategy[dict[str, Any]]:
    """A valid submission with one field replaced: the bad value reaches the deep checks."""
    valid = {"destinations": ["a"], "payload": {"x": 1}}
    return st.one_of(
        st.fixed_dictionaries({"destinations": st.lists(names, max_size=3) | json_values}),
        st.fixed_dictionaries({"payload": json_values | nested | st.text(min_size=50, max_size=120)}),
        st.fixed_dictionaries({"correlation_id": keys_ | json_values}),
        st.fixed_dictionaries({"idempotency_key": keys_ | json_values}),
        st.fixed_dictionaries({"priority": st.sampled_from(["default", "high", "", "default\x00"]) | json_values}),
    ).map(lambda bad: {**valid, **bad})


def _encode(value: Any) -> bytes:
    try:
        return json.dumps(value).encode()
    except (RecursionError, ValueError):
        return b"[]"


bodies = st.one_of(
    one_bad_field().map(_encode),
    body_fields().map(_encode),
    json_values.map(_encode),
    st.binary(max_size=200),
    deep.map(str.encode),
    deep.map(lambda d: ('{"destinations": ["a"], "payload": ' + d + "}").encode()),
    st.just(b'{"destinations": ["a"], "payload": "\\ud800"}'),
    st.just(b'{"destinations": ["a"], "payload": "\xff\xfe"}'),
)


def _written(db: psycopg.Connection[Any], r: redis.Redis) -> tuple[int, str]:
    """Job rows and the stream's last generated id: what a submit writes."""
    row = db.execute("SELECT count(*) FROM distribution_jobs").fetchone()
    assert row is not None
    try:
        last = r.xinfo_stream(STREAM)["last-generated-id"]
    except redis.ResponseError:
        last = "none"
    return int(row[0]), str(last)


DESTS = [destination("a", "http://127.0.0.1:9/in"), destination("small", "http://127.0.0.1:9/in",
                                                                  max_payload_bytes=64)]


async def test_submit_api_refuses_bad_bodies_with_nothing_written(make_settings, sink: Sink, start_engine,
                                                                  database_url, redis_url) -> None:
    dests = [{**d, "url": sink.url("/in")} for d in DESTS]
    engine = await start_engine(make_settings(destinations=dests))
    url = f"http://127.0.0.1:{engine.http_port}/api/v1/distributions"
    seen: dict[int, int] = {}

    def hammer() -> None:
        import httpx

        with httpx.Client(timeout=30) as http, psycopg.connect(database_url, autocommit=True) as db, \
                redis.Redis.from_url(redis_url, decode_responses=True) as r:

            @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
            @given(body=bodies)
            @example(body=b'{"destinations": ["a"], "payload": 1, "correlation_id": "a\\u0000b"}')
            @example(body=b'{"destinations": ["a"], "payload": 1, "idempotency_key": "\\ud800"}')
            @example(body=b"[" * 100_000)
            def post(body: bytes) -> None:
                before = _written(db, r)
                resp = http.post(url, content=body, headers={"Content-Type": "application/json"})
                seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
                check_response("POST", url, resp.status_code, resp.headers, resp.content)
                assert resp.status_code in (200, 202, 400, 413, 422), (resp.status_code, resp.text[:300])
                assert resp.headers["Content-Type"].startswith("application/json")
                data = resp.json()
                after = _written(db, r)
                if resp.status_code >= 400:
                    assert set(data) == {"error"}, data
                    assert data["error"] and "\n" not in data["error"] and len(data["error"]) < 400
                    assert after == before, f"a refused submit wrote something: {body[:200]!r}"
                elif resp.status_code == 202:
                    assert after[0] == before[0] + len(data["distributions"])
                else:  # an idempotent replay
                    assert after == before

            post()

    await asyncio.to_thread(hammer)
    assert seen.get(400) and seen.get(202)  # both paths were exercised


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    data=st.one_of(json_values.map(_encode).map(bytes.decode), st.text(max_size=60), deep,
                   st.just('"\\ud800"'), st.just("[" * 5000)),
    dests=st.just(["a"]) | st.lists(names, min_size=1, max_size=3),
    options=st.fixed_dictionaries({}, optional={
        "--priority": st.sampled_from(["default", "high", "", "default\x00"]) | st.text(max_size=10),
        "--correlation-id": keys_,
        "--idempotency-key": keys_,
    }),
)
@example(data="{}", dests=["a"], options={"--correlation-id": "a\x00b"})
@example(data="{}", dests=["a"], options={"--idempotency-key": "\ud800"})
@example(data="[" * 100_000, dests=["a"], options={})
def test_cli_submit_refuses_bad_input_with_one_line(cli_env: dict[str, str], database_url: str, redis_url: str,
                                                    data: str, dests: list[str], options: dict[str, str]) -> None:
    args = ["submit", f"--data={data}", *[f"--destination={d}" for d in dests],
            *[f"{k}={v}" for k, v in options.items()], "--json"]
    with psycopg.connect(database_url, autocommit=True) as db, redis.Redis.from_url(redis_url,
                                                                                    decode_responses=True) as r:
        before = _written(db, r)
        result = cli(args, cli_env)
        after = _written(db, r)
    assert isinstance(result.exception, SystemExit | None), repr(result.exception)
    if result.exit_code == 0:
        made = json.loads(result.stdout)["distributions"]
        assert after[0] in (before[0], before[0] + len(made))
        return
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert after == before, f"a refused submit wrote something: {args}"


@pytest.fixture
def cli_env(env_for: dict[str, str], tmp_path: Path) -> dict[str, str]:
    config = write_config(tmp_path / "submit.yaml", {"destinations": DESTS})
    return {**env_for, "MS07_CONFIG": str(config)}
