"""A circuit deferral is not an attempt: no request, no attempt row, no attempt counted.

Real Redis, PostgreSQL and a loopback destination; the engine in-process (its metrics say
how many deferrals there were)."""

from __future__ import annotations

from typing import Any

from ms07.engine.delivery import ErrorCode
from tests.support import Sink, ok, status, submit_n, wait_for

N_DEFERRALS = 12


async def _jobs(engine: Any, ids: list[str]) -> dict[str, tuple[str, int, str | None]]:
    async with engine.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT distribution_id::text, status, attempts, last_error_code FROM distribution_jobs "
            "WHERE distribution_id = ANY(%s::uuid[])", (ids,))
        return {r[0]: (r[1], r[2], r[3]) for r in await cur.fetchall()}


async def _attempt_rows(engine: Any, ids: list[str]) -> dict[str, list[tuple[int, str | None]]]:
    out: dict[str, list[tuple[int, str | None]]] = {i: [] for i in ids}
    async with engine.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT distribution_id::text, attempt, error_code FROM distribution_attempts "
            "WHERE distribution_id = ANY(%s::uuid[]) ORDER BY distribution_id, attempt", (ids,))
        for did, attempt, code in await cur.fetchall():
            out[did].append((attempt, code))
    return out


def _attempt_headers(sink: Sink, did: str) -> list[str]:
    return [r.headers["X-Distribution-Attempt"] for r in sink.received if r.headers.get("Idempotency-Key") == did]


async def test_deferrals_while_the_circuit_is_open_count_no_attempt(make_settings, sink: Sink, start_engine) -> None:
    sink.on("/down", status(503))
    settings = make_settings(
        destinations=[{"name": "down", "url": sink.url("/down")}],
        circuit_breaker={"failure_threshold": 1, "recovery_timeout": 1.0},
        distribution={"max_attempts": 50},
        service={"concurrency": 1},
    )
    engine = await start_engine(settings)
    [opener] = await submit_n(engine, "down")
    await wait_for(lambda: engine.breakers["down"].state == "open", what="circuit open")
    later = await submit_n(engine, "down", 4)  # read while the circuit is open or half-open
    ids = [opener, *later]
    deferrals = engine.metrics.errors.labels("down", ErrorCode.CIRCUIT_OPEN)

    async def deferred_without_a_request() -> list[str]:
        jobs = await _jobs(engine, later)  # Postgres first: a request the sink has not seen has no row
        requested = {r.headers.get("Idempotency-Key") for r in sink.received}
        return [i for i, (st, _, code) in jobs.items() if code == ErrorCode.CIRCUIT_OPEN and i not in requested]

    untouched = await wait_for(deferred_without_a_request, timeout=20, what="a job deferred before any request")
    jobs, rows = await _jobs(engine, untouched), await _attempt_rows(engine, untouched)
    assert all(jobs[i][1] == 0 for i in untouched), f"deferrals counted as attempts: {jobs}"
    assert all(rows[i] == [] for i in untouched), f"deferrals wrote attempt rows: {rows}"

    await wait_for(lambda: deferrals._value.get() >= N_DEFERRALS, timeout=30, what=f"{N_DEFERRALS} deferrals")
    sink.on("/down", ok)
    await wait_for(lambda: {r.headers.get("Idempotency-Key") for r in sink.received if r.status == 200} >= set(ids),
                   timeout=30, what="every job delivered once the destination recovered")
    await wait_for(lambda: _all_delivered(engine, ids), what="every outcome recorded")

    jobs, rows = await _jobs(engine, ids), await _attempt_rows(engine, ids)
    requests = 0
    for did in ids:
        headers = _attempt_headers(sink, did)
        k = len(headers)
        requests += k
        # Each real request carries the number of the next real attempt: the deferrals in
        # between skipped no number.
        assert headers == [str(n) for n in range(1, k + 1)], (did, headers)
        assert [n for n, _ in rows[did]] == list(range(1, k + 1)), (did, rows[did])
        assert ErrorCode.CIRCUIT_OPEN not in {c for _, c in rows[did]}, (did, rows[did])
        assert jobs[did][:2] == ("delivered", k), (did, jobs[did])
    assert deferrals._value.get() >= N_DEFERRALS > 0
    assert requests == len(sink.received)  # every request belongs to an attempt row, and no more rows


async def _all_delivered(engine: Any, ids: list[str]) -> bool:
    return all(st == "delivered" for st, _, _ in (await _jobs(engine, ids)).values())
