"""The OpenAPI 3.1 description: served at /api/v1/openapi.json (token required), the same
as docs/openapi.json, covering every route build_app registers; and the API fuzzed from it
with Schemathesis: no 5xx, no answer outside the description, no partial write."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from ms07.engine.openapi import description
from ms07.engine.server import build_app
from tests.support import Sink, check_response

DOCS = Path(__file__).resolve().parents[2] / "docs"
TOKEN = "openapi-test-token-5d1c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def engine(monkeypatch: pytest.MonkeyPatch, make_settings, sink: Sink, start_engine) -> Any:
    monkeypatch.setenv("MS07_API_TOKEN", TOKEN)
    return await start_engine(make_settings(
        destinations=[{"name": "a", "url": sink.url("/a")}, {"name": "b", "url": sink.url("/b")}],
        service={"max_batch_items": 3}))


async def test_served_with_the_token_and_equal_to_the_committed_file(engine: Any) -> None:
    url = f"http://127.0.0.1:{engine.http_port}/api/v1/openapi.json"
    async with httpx.AsyncClient() as http:
        denied = await http.get(url)
        served = await http.get(url, headers=AUTH)
    assert denied.status_code == 401
    assert served.status_code == 200 and served.headers["Content-Type"].startswith("application/json")
    check_response("GET", url, served.status_code, served.headers, served.content)
    assert served.json()["openapi"] == "3.1.0"
    assert served.text == (DOCS / "openapi.json").read_text(encoding="utf-8"), \
        "docs/openapi.json is stale: python -m ms07.engine.openapi docs/openapi.json"


async def test_every_route_of_build_app_is_described(engine: Any) -> None:
    app = build_app(engine)
    served = {(r.method.lower(), r.resource.canonical) for r in app.router.routes()
              if r.method != "HEAD" and r.resource is not None
              and not r.resource.canonical.startswith("/console")}  # HTML pages: docs/console.md
    described = {(m, p) for p, item in description()["paths"].items() for m in item if m in ("get", "post", "put",
                                                                                             "patch", "delete")}
    assert served - described == set(), "routes missing from ms07/engine/openapi.yaml"
    assert described - served == set(), "described operations no route serves"


def _jobs(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as db:
        row = db.execute("SELECT count(*) FROM distribution_jobs").fetchone()
    assert row is not None
    return int(row[0])


async def test_fuzzed_from_the_description(engine: Any, database_url: str) -> None:
    """Every operation, with bodies Schemathesis draws from the description (mostly unknown
    destinations; the explicit examples reach 202). Each answer: not 5xx, its status, media
    type, headers and body as described; the job rows grow by exactly the jobs of a 202
    and by nothing otherwise."""
    import schemathesis
    from hypothesis import HealthCheck, example, given, settings
    from schemathesis import GenerationMode
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_headers_conformance, response_schema_conformance]
    base = f"http://127.0.0.1:{engine.http_port}"
    schema = schemathesis.openapi.from_dict(description())
    seen: dict[str, set[int]] = {}
    good = {"destinations": ["a", "b"], "payload": {"n": 1}}
    submit_examples = [good, {**good, "idempotency_key": "fz-1"}, {"distributions": [good, {**good,
                                                                                             "priority": "default"}]},
                       {"distributions": [good, {"destinations": ["nope"], "payload": 1}]},
                       {"distributions": [good] * 4}]

    def test_of(operation: Any, mode: Any) -> Any:
        name = f"{operation.method.upper()} {operation.path}"

        @settings(max_examples=25, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def one(case: Any) -> None:
            before = _jobs(database_url)
            response = case.call(base_url=base, headers=AUTH, timeout=30)
            case.validate_response(response, checks=checks)
            check_response(case.method, f"{base}{case.formatted_path}", response.status_code,
                           response.headers, response.content)
            seen.setdefault(name, set()).add(response.status_code)
            after = _jobs(database_url)
            if response.status_code == 202 and name == "POST /api/v1/distributions":
                data = response.json()
                answers = data["distributions"] if "correlation_id" not in data else [data]
                fresh = sum(len(a["distributions"]) for a in answers if not a.get("replayed"))
                assert after == before + fresh, (case.body, data)
            else:
                # (A replay changes jobs' status, never their number.)
                assert after == before, f"{name} answered {response.status_code} and wrote jobs: {case.body!r}"

        if name == "POST /api/v1/distributions" and mode is GenerationMode.POSITIVE:
            for body in submit_examples:
                one = example(case=operation.Case(body=body, media_type="application/json"))(one)
        return one

    def fuzz() -> None:
        for result in schema.get_all_operations():
            operation = result.ok()
            test_of(operation, GenerationMode.POSITIVE)()
            # Inputs that break the description, where it constrains any (a body, a query).
            if f"{operation.method.upper()} {operation.path}" in ("POST /api/v1/distributions", "GET /debug/memory"):
                test_of(operation, GenerationMode.NEGATIVE)()

    await asyncio.to_thread(fuzz)
    assert {"GET /health/live", "GET /metrics", "POST /api/v1/distributions", "GET /debug/memory"} <= set(seen)
    assert {202, 422, 413} <= seen["POST /api/v1/distributions"], seen


def test_the_committed_description_is_json_of_the_yaml() -> None:
    assert json.loads((DOCS / "openapi.json").read_text(encoding="utf-8")) == description()


def test_the_description_is_valid_openapi_3_1() -> None:
    """Against the OpenAPI 3.1 meta-schema (Schemathesis's check of a loaded schema)."""
    import schemathesis

    schemathesis.openapi.from_dict(description()).validate()
    broken = json.loads(json.dumps(description()))
    broken["paths"]["/metrics"]["get"]["responses"] = {"200": {"content": 5}}
    with pytest.raises(Exception, match="content"):
        schemathesis.openapi.from_dict(broken).validate()
