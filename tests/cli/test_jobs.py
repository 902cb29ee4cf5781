"""History search: ``GET /api/v1/distributions``, ``/attempts``, ``ms07 jobs list/show``."""

from __future__ import annotations

import json
import uuid
from typing import Any

import aiohttp
import psycopg
import pytest

from tests.support import Sink, acli


def insert(database_url: str, n: int, *, destination: str = "a", status: str = "delivered",
           created: str = "2026-12-03 14:00:00+00", step: str = "1 second", error_code: str | None = None,
           correlation_id: str | None = None) -> list[str]:
    """``n`` jobs created ``step`` apart from ``created``; their ids, oldest first."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            """INSERT INTO distribution_jobs (distribution_id, destination_name, status, payload, created_at,
                                              completed_at, last_error_code, correlation_id, attempts)
               SELECT gen_random_uuid(), %s, %s, '{}', %s::timestamptz + (i * %s::interval),
                      CASE WHEN %s IN ('delivered', 'failed', 'dead')
                           THEN %s::timestamptz + (i * %s::interval) + interval '1 minute' END,
                      %s, %s, 1
                 FROM generate_series(0, %s - 1) AS i
            RETURNING distribution_id::text, created_at""",
            (destination, status, created, step, status, created, step, error_code, correlation_id, n),
        ).fetchall()
    return [r[0] for r in sorted(rows, key=lambda r: r[1])]


@pytest.fixture
async def engine(make_settings, sink: Sink, start_engine) -> Any:
    return await start_engine(make_settings(destinations=[{"name": "a", "url": sink.url("/in")}]))


async def _get(engine: Any, path: str, **params: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{engine.http_port}{path}", params=params) as r:
            return r.status, await r.json()


async def test_api_filters_and_pages_newest_first(engine: Any, database_url: str) -> None:
    dead = insert(database_url, 5, status="dead", error_code="HTTP_500", correlation_id="c-9")
    insert(database_url, 3, destination="b", status="dead", error_code="HTTP_500")
    insert(database_url, 4, status="delivered", created="2026-12-03 16:30:00+00")
    code, body = await _get(engine, "/api/v1/distributions", destination="a", status="dead,failed", limit="2",
                            since="2026-12-03T13:00:00Z", until="2026-12-03T15:00:00+00:00")
    assert code == 200 and set(body) == {"distributions", "next_cursor"}
    seen = [d["distribution_id"] for d in body["distributions"]]
    assert "attempts" not in body["distributions"][0] and body["distributions"][0]["status"] == "dead"
    while body["next_cursor"]:
        code, body = await _get(engine, "/api/v1/distributions", destination="a", status="dead,failed", limit="2",
                                since="2026-12-03T13:00:00Z", until="2026-12-03T15:00:00+00:00",
                                cursor=body["next_cursor"])
        assert code == 200, body
        seen += [d["distribution_id"] for d in body["distributions"]]
    assert seen == list(reversed(dead))
    code, body = await _get(engine, "/api/v1/distributions", correlation_id="c-9", error_code="HTTP_500")
    assert sorted(d["distribution_id"] for d in body["distributions"]) == sorted(dead)
    late = insert(database_url, 4, status="delivered", created="2026-12-03 10:00:00+00")
    with psycopg.connect(database_url, autocommit=True) as conn:  # created early, finished last
        conn.execute("UPDATE distribution_jobs SET completed_at = '2026-12-03 18:00:00+00'"
                     " WHERE distribution_id = ANY(%s::uuid[])", (late,))
    code, body = await _get(engine, "/api/v1/distributions", since="2026-12-03T16:31:00Z", on="finished", limit="5")
    assert code == 200 and body["next_cursor"]
    code, more = await _get(engine, "/api/v1/distributions", since="2026-12-03T16:31:00Z", on="finished", limit="5",
                            cursor=body["next_cursor"])
    finished = body["distributions"] + more["distributions"]
    assert code == 200 and more["next_cursor"] is None
    # Newest finished first; a job finished later, whenever created, comes before.
    assert len(finished) == 8 and finished == sorted(finished, key=lambda d: (d["completed_at"],
                                                                                d["distribution_id"]), reverse=True)
    assert {d["distribution_id"] for d in finished[:4]} == set(late)


@pytest.mark.parametrize(("params", "says"), [
    ({"since": "yesterday"}, "is not a time"),
    ({"since": "2026-12-03T14:00:00"}, "no UTC offset"),
    ({"since": "25:00"}, "not a time of day"),
    ({"since": "2h", "until": "3h"}, "is not before until"),
    ({"status": "dead,lost"}, "unknown status 'lost'"),
    ({"limit": "0"}, "limit 0 is out of range"),
    ({"cursor": "garbage!"}, "cursor is not one ms07 made"),
    ({"colour": "red"}, "unknown filter 'colour'"),
])
async def test_api_bad_input_is_one_clear_400(engine: Any, params: dict[str, str], says: str) -> None:
    code, body = await _get(engine, "/api/v1/distributions", **params)
    assert code == 400 and says in body["error"] and "\n" not in body["error"], body


async def test_a_cursor_from_another_query_is_refused(engine: Any, database_url: str, env_for: dict[str, str]) -> None:
    insert(database_url, 3, status="dead")
    _, body = await _get(engine, "/api/v1/distributions", status="dead", limit="1")
    code, other = await _get(engine, "/api/v1/distributions", status="failed", limit="1", cursor=body["next_cursor"])
    assert code == 400 and other["error"].startswith("cursor belongs to another query")
    result = await acli(["jobs", "list", "--status", "failed", "--cursor", body["next_cursor"]], env_for)
    assert result.exit_code == 2 and "cursor belongs to another query" in result.output
    result = await acli(["jobs", "list", "--status", "dead", "--limit", "1", "--cursor", body["next_cursor"],
                         "--json"], env_for)
    assert result.exit_code == 0, result.output


async def test_attempts_route(engine: Any, database_url: str) -> None:
    [did] = insert(database_url, 1, status="dead")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("""INSERT INTO distribution_attempts (distribution_id, destination_name, attempt, status,
                                                           response_status_code, started_at, completed_at)
                        VALUES (%s, 'a', 1, 'failed', 500, now(), now())""", (did,))
    code, body = await _get(engine, f"/api/v1/distributions/{did}/attempts")
    assert code == 200 and [(a["attempt"], a["response_status_code"]) for a in body["attempts"]] == [(1, 500)]
    code, body = await _get(engine, f"/api/v1/distributions/{uuid.uuid4()}/attempts")
    assert code == 404


async def test_cli_jobs_list_and_show(database_url: str, env_for: dict[str, str]) -> None:
    ids = insert(database_url, 3, status="failed", error_code="HTTP_400")
    result = await acli(["jobs", "list", "--status", "failed", "--limit", "2", "--json"], env_for)
    assert result.exit_code == 0, result.output
    page = json.loads(result.stdout)
    assert [d["distribution_id"] for d in page["distributions"]] == ids[:0:-1] and page["next_cursor"]
    result = await acli(["jobs", "list", "--status", "failed", "--limit", "2", "--cursor", page["next_cursor"]],
                        env_for)
    assert result.exit_code == 0 and ids[0] in result.output and "no more" in result.output, result.output
    result = await acli(["jobs", "list", "--since", "14:00"], env_for)
    assert result.exit_code == 0 and "local zone" in result.output, result.output
    for command in (["jobs", "show"], ["status"]):
        result = await acli([*command, ids[0][:8], "--json"], env_for)
        assert result.exit_code == 0 and json.loads(result.stdout)["distribution_id"] == ids[0], result.output


@pytest.mark.parametrize(("args", "says"), [
    (["--since", "16:00", "--until", "14:00"], "is not before until"),
    (["--status", "lost"], "unknown status"),
    (["--until", "2026-13-01T00:00:00Z"], "is not a time"),
])
async def test_cli_bad_input_one_line_exit_2(env_for: dict[str, str], args: list[str], says: str) -> None:
    result = await acli(["jobs", "list", *args], env_for)
    assert result.exit_code == 2 and says in result.output and "Traceback" not in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
