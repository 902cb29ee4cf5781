"""Environment variables: read in one place (ms07.config's overlay), for every command
alike; the two short spellings are the same knob as their MS07_SERVICE__ form; a bad
value is reported under the variable's name; a command-line option overrides them."""

from __future__ import annotations

from pathlib import Path

import pytest

from ms07.config import load_settings
from ms07.errors import ConfigError
from tests.support import cli


def test_ms07_concurrency_sets_service_concurrency_for_every_command() -> None:
    # It used to be read only by `ms07 run` (a Typer envvar), so `diagnose latency`
    # judged capacity with the file's concurrency while the engine ran with another.
    assert load_settings(None, environ={"MS07_CONCURRENCY": "8"}).service.concurrency == 8
    assert load_settings(None, environ={"MS07_SERVICE__CONCURRENCY": "8"}).service.concurrency == 8


@pytest.mark.parametrize("short, long", [("MS07_CONCURRENCY", "MS07_SERVICE__CONCURRENCY"),
                                         ("MS07_HTTP_PORT", "MS07_SERVICE__HTTP_PORT")])
@pytest.mark.parametrize("short_first", [True, False])
def test_two_spellings_of_one_knob_must_agree(short: str, long: str, short_first: bool) -> None:
    # Before, the later of the two in os.environ silently won.
    environ = {short: "81", long: "82"} if short_first else {long: "82", short: "81"}
    with pytest.raises(ConfigError) as err:
        load_settings(None, environ=environ)
    assert short in str(err.value) and long in str(err.value) and "unset one" in str(err.value)
    agreeing = load_settings(None, environ={short: "81", long: "81"})
    assert getattr(agreeing.service, long.split("__")[1].lower()) == 81


def test_bad_environment_value_names_the_variable_not_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("service:\n  http_port: 9090\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={"MS07_HTTP_PORT": "eighty"})
    assert str(err.value) == "MS07_HTTP_PORT: service.http_port: expected an integer, got 'eighty'"
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={"MS07_SERVICE__CONCURRENCY": "0"})
    assert str(err.value) == "MS07_SERVICE__CONCURRENCY: service.concurrency: must be between 1 and 10000"
    path.write_text("service:\n  http_port: x\n")
    with pytest.raises(ConfigError) as err:  # a bad value in the file still names the file and line
        load_settings(path, environ={"MS07_SERVICE__PREFETCH": "2"})
    assert str(err.value) == f"{path}: service.http_port: expected an integer, got 'x' (line 2)"


def test_config_option_overrides_ms07_config(tmp_path: Path) -> None:
    # `ms07 run` used to read MS07_CONFIG again for its own --config, so the variable
    # overrode `ms07 --config FILE run`. Both files are invalid: the engine never starts.
    from_env = tmp_path / "env.yaml"
    from_env.write_text("service: {concurrency: 0}\n")
    given = tmp_path / "given.yaml"
    given.write_text("service: {prefetch: 0}\n")
    result = cli(["--config", str(given), "run"], env={"MS07_CONFIG": str(from_env), "NO_COLOR": "1"})
    assert result.exit_code == 2, result.output
    assert str(given) in result.output and "prefetch" in result.output, result.output


def test_run_concurrency_zero_is_refused_not_ignored(tmp_path: Path) -> None:
    # `--concurrency 0` used to be dropped (a falsy value) and the engine started with the
    # configured concurrency. Unreachable servers: were it to start, it would fail at once.
    env = {"NO_COLOR": "1", "MS07_DATABASE_URL": "postgresql://127.0.0.1:9/none?connect_timeout=1",
           "MS07_REDIS_URL": "redis://127.0.0.1:9/0", "MS07_STATE_DIR": str(tmp_path)}
    result = cli(["run", "--concurrency", "0"], env=env)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == "error: command line: service.concurrency: must be between 1 and 10000"
