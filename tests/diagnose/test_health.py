"""diagnose health: the engine's /health/ready and /health/detailed with the bearer token."""

from __future__ import annotations

from ms07.diagnose import DiagnoseOptions, run_check_async
from tests.diagnose.conftest import acli, parse, validate_check
from tests.diagnose.test_timeouts import closed_port
from tests.support import destination, wait_for


async def test_ready_engine_with_token(make_settings, sink, monkeypatch, cli, config_file, start_engine) -> None:
    monkeypatch.setenv("MS07_API_TOKEN", "api-token-2")
    settings = make_settings(destinations=[destination("d1", sink.url("/in"), health_url=sink.url("/health"))])
    engine = await start_engine(settings)
    url = f"http://127.0.0.1:{engine.http_port}"
    opts = DiagnoseOptions.from_settings(settings, url=url)
    result = await wait_for(
        lambda: _healthy(settings, opts), timeout=20, what="a ready engine")
    assert result.finding("ready").summary.startswith("engine ready")
    assert result.finding("detailed").severity == "info"
    assert any(s.title == "destinations (engine view)" and s.rows[0][0] == "d1" for s in result.sections)
    res = await acli(cli, ["diagnose", "health", "--json", "--url", url], config=config_file(),
                     env={"MS07_API_TOKEN": "api-token-2"})
    assert res.exit_code == 0, res.output
    validate_check(parse(res))
    res = await acli(cli, ["diagnose", "health", "--json"], config=config_file(),
                     env={"MS07_API_TOKEN": "wrong", "MS07_HEALTH_URL": url})
    assert res.exit_code == 3
    assert parse(res)["findings"][0]["id"] == "health.unauthorized"


async def _healthy(settings, opts):  # type: ignore[no-untyped-def]
    result = await run_check_async(settings, "health", opts)
    return result if result.status == "healthy" else None


async def test_degraded_engine_names_the_failing_check(make_settings, start_engine) -> None:
    port = closed_port()
    settings = make_settings(destinations=[destination("down", f"http://127.0.0.1:{port}/in",
                                                       health_url=f"http://127.0.0.1:{port}/health")])
    engine = await start_engine(settings)
    opts = DiagnoseOptions.from_settings(settings, url=f"http://127.0.0.1:{engine.http_port}")

    async def degraded():  # type: ignore[no-untyped-def]
        r = await run_check_async(settings, "health", opts)
        return r if r.finding("ready").severity == "warning" else None

    result = await wait_for(degraded, timeout=20, what="the engine to see the destination down")
    ready = result.finding("ready")
    assert "destinations degraded" in ready.summary and ready.command == "ms07 diagnose timeouts"
    assert result.exit_code == 1


async def test_engine_down_is_critical(make_settings, cli, config_file) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    result = await run_check_async(make_settings(), "health", DiagnoseOptions.from_settings(make_settings(), url=url))
    assert result.finding("unreachable").severity == "critical" and result.exit_code == 2
    res = await acli(cli, ["diagnose", "health", "--url", url], config=config_file())
    assert res.exit_code == 2 and res.stdout.startswith(f"CRITICAL health: the engine does not answer at {url}")
