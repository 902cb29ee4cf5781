"""diagnose all: a healthy system is OK with no warning; unreachable dependencies are UNKNOWN."""

from __future__ import annotations

from ms07.diagnose import run_checks_async
from ms07.ops.submit import submit
from ms07.runtime import Runtime
from tests.diagnose.conftest import acli, parse, validate_all
from tests.diagnose.test_timeouts import closed_port
from tests.support import destination, wait_for


async def test_healthy_system_exits_0_without_warnings(
    make_settings, sink, cli, config_file, start_engine
) -> None:
    dests = [destination("d1", sink.url("/in"), health_url=sink.url("/health"))]
    settings = make_settings(destinations=dests)
    engine = await start_engine(settings)
    async with Runtime(settings) as rt:
        async with rt.connection() as conn:
            await submit(conn, await rt.queue(), settings, ["d1"], {"hello": 1})
    await wait_for(lambda: sink.counts["/in"] >= 1, what="the delivery")

    async def health_checked() -> bool:
        async with Runtime(settings) as rt, rt.connection() as conn:
            cur = await conn.execute("SELECT health_status FROM destinations WHERE name = 'd1'")
            return (await cur.fetchone())[0] == "healthy"

    await wait_for(health_checked, what="the engine's first health probe")
    await wait_for(lambda: engine.delivered >= 1, what="the outcome")
    url = f"http://127.0.0.1:{engine.http_port}"
    res = await acli(
        cli, ["diagnose", "all", "--json", "--url", url], config=config_file(destinations=dests)
    )
    data = parse(res)
    validate_all(data)
    problems = [
        (c["check"], f["id"], f["severity"])
        for c in data["checks"]
        for f in c["findings"]
        if f["severity"] != "info"
    ]
    assert res.exit_code == 0 and data["status"] == "healthy", problems
    assert problems == []
    assert [c["check"] for c in data["checks"]] == [
        "timeouts",
        "latency",
        "auth",
        "errors",
        "queue",
        "memory",
        "health",
    ]
    text = await acli(
        cli, ["diagnose", "all", "--url", url], config=config_file(destinations=dests)
    )
    assert text.exit_code == 0
    assert text.stdout.splitlines()[0] == "OK: all 7 checks healthy"
    report = await run_checks_async(settings)
    assert {r.check: r.status for r in report.results}["latency"] == "healthy"


async def test_unreachable_postgres_and_redis_are_unknown_not_a_traceback(
    cli, config_file, tmp_path
) -> None:
    env = {
        "MS07_DATABASE_URL": f"postgresql://ms07@127.0.0.1:{closed_port()}/ms07",
        "MS07_REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0",
    }
    cfg = config_file(destinations=[destination("d1", "http://127.0.0.1:9/in")])
    for check in ("timeouts", "latency", "auth", "queue"):
        res = await acli(cli, ["diagnose", check, "--json"], config=cfg, env=env)
        data = parse(res)
        assert "Traceback" not in res.output
        if check == "timeouts":
            # The live probe of the destination still ran: a found problem beats UNKNOWN.
            assert data["status"] == "critical" and res.exit_code == 2
            assert any(f["id"] == "timeouts.probe_unreachable" for f in data["findings"])
        elif check == "auth":
            assert data["status"] == "unknown" and res.exit_code == 3  # its config part still ran
            assert any(f["id"] == "auth.config" for f in data["findings"])
        else:
            assert data["status"] == "unknown" and res.exit_code == 3, data
        unknown = [f for f in data["findings"] if f["id"].endswith("_unavailable")]
        assert unknown and all(f["severity"] == "warning" for f in unknown)
    res = await acli(cli, ["diagnose", "all"], config=cfg, env=env)
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "postgres unreachable; not checked" in res.stdout


async def test_bad_input_is_one_line_and_unknown(cli, config_file, tmp_path) -> None:
    res = await acli(cli, ["diagnose", "queue", "--since", "yesterday"], config=config_file())
    assert res.exit_code == 3
    assert (
        res.output.strip()
        == "error: --since: 'yesterday' is not a duration (use e.g. 90s, 30m, 2h, 1d)"
    )
    res = await acli(cli, ["diagnose", "latency", "--p95-threshold-ms", "-5"], config=config_file())
    assert (
        res.exit_code == 3
        and res.output.strip() == "error: p95-threshold-ms: must be positive, got -5.0"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("diagnose: {stuck_after_minutes: 0}\n")
    res = await acli(cli, ["diagnose", "timeouts"], config=bad)
    assert res.exit_code == 3 and "diagnose.stuck_after_minutes: must be positive" in res.output
    res = await acli(cli, ["diagnose", "queue", "--notify"], config=config_file())
    assert res.exit_code == 3 and "escalation.alertmanager_url is not set" in res.output


def test_cli_module_imports_nothing_heavy() -> None:
    import subprocess
    import sys

    # ms07.diagnose.options is light (the diagnose commands are generated from it); the
    # checks are not.
    code = (
        "import sys, ms07.cli; heavy = [m for m in ('kubernetes', 'psycopg', 'httpx', 'psutil', "
        "'ms07.diagnose.runner', 'ms07.diagnose.model') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)  # noqa: S603
    assert out.stdout.strip() == "[]"


async def test_database_without_schema_says_migrate(servers, redis_url, cli, config_file) -> None:
    import uuid

    import psycopg

    name = f"ms07_noschema_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(servers.admin_url, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    try:
        env = {"MS07_DATABASE_URL": servers.database_url(name), "MS07_REDIS_URL": redis_url}
        res = await acli(cli, ["diagnose", "latency", "--json"], config=config_file(), env=env)
        assert res.exit_code == 3
        [f] = parse(res)["findings"]
        assert f["id"] == "latency.postgres_unavailable" and f["command"] == "ms07 db migrate"
        assert f["summary"] == "postgres has no ms07 schema; not checked: latency per destination"
    finally:
        with psycopg.connect(servers.admin_url, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
