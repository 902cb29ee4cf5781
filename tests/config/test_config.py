"""Settings load from YAML + env, and every bad input is one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from ms07.config import load_settings, redact_url, resolve_secret
from ms07.errors import ConfigError
from tests.support import cli

GOOD = """
service: {http_port: 9090}
distribution:
  timeout_seconds: 30
  retry_backoff_multiplier: 3
  claim_idle_seconds: 60
destinations:
  - name: ms09-reporter
    url: https://ms09.zenia.local/api/reports
    health_url: https://ms09.zenia.local/health
    auth: {type: bearer, token_env: MS09_TOKEN}
    pool: {max_connections: 10}
    batch: {max_items: 50, max_wait_ms: 20}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_loads_yaml_and_defaults(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, GOOD), environ={})
    assert s.service.http_port == 9090
    assert s.distribution.timeout_seconds == 30.0
    assert s.distribution.retry_backoff_multiplier == 3.0
    assert s.distribution.max_attempts == 5  # default
    d = s.destination("ms09-reporter")
    assert d.pool.max_connections == 10 and d.pool.keepalive_expiry == 30.0
    assert d.batch is not None and d.batch.max_items == 50
    assert d.auth.redacted() == {"type": "bearer", "token_env": "MS09_TOKEN",
                                 "token_auth_method": "client_secret_basic", "refresh_margin_seconds": 30.0}


def test_env_overlays_yaml(tmp_path: Path) -> None:
    env = {"MS07_HTTP_PORT": "7000", "MS07_DISTRIBUTION__MAX_ATTEMPTS": "9", "MS07_REDIS_URL": "redis://x",
           "MS07_LOG_LEVEL": "DEBUG"}
    s = load_settings(write(tmp_path, GOOD), environ=env)
    assert s.service.http_port == 7000
    assert s.distribution.max_attempts == 9
    assert s.redis_url == "redis://x"
    assert s.log_level == "DEBUG"


def test_config_from_ms07_config_env(tmp_path: Path) -> None:
    s = load_settings(None, environ={"MS07_CONFIG": str(write(tmp_path, GOOD))})
    assert s.destination_names == ["ms09-reporter"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("distribution:\n  timeout_secs: 3\n", "distribution.timeout_secs: unknown key (line 2)"),
        ("distribution:\n  timeout_seconds: fast\n",
         "distribution.timeout_seconds: expected a number, got 'fast' (line 2)"),
        ("distribution: {claim_idle_seconds: 10, timeout_seconds: 60}\n",
         "distribution.claim_idle_seconds: must exceed"),
        ("destinations:\n  - name: a\n", "destinations[0].url: is required"),
        ("destinations:\n  - {name: a, url: 'ftp://x'}\n", "is not an http(s) URL"),
        ("destinations:\n  - {name: a, url: 'http://u:p@x'}\n", "credentials in the URL are not allowed"),
        ("destinations:\n  - {name: a, url: 'http://x'}\n  - {name: a, url: 'http://y'}\n", "defined twice"),
        ("destinations:\n  - {name: a, url: 'http://x', auth: {type: magic}}\n", "auth.type: must be one of"),
        ("destinations:\n  - {name: a, url: 'http://x', auth: {type: bearer}}\n", "auth.token_env: is required"),
        ("destinations:\n  - {name: a, url: 'http://x', timeout_seconds: 120}\n",
         "is not below distribution.claim_idle_seconds"),
        ("network: {allow_cidrs: ['10.0.0.0/33']}\n", "is not a CIDR range"),
        ("service:\n  http_port: [1]\n", "expected an integer"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("a: b: c\n", "line 1 invalid YAML"),
        ("x: 1\nx: 2\n", "duplicate key 'x' at line 2"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text), environ={})
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("service: {http_port: 8080}\ndestinations:\n  - name: a\n    url: http://x/\n  - name: b\n"
         "    url: example.com/in\n",
         "destinations.b.url: 'example.com/in' has no scheme: write http:// or https:// before the host (line 6)"),
        ("destinations:\n  - name: a\n    url: 'ftp://x'\n",
         "destinations.a.url: 'ftp://x' is not an http(s) URL (line 3)"),
        ("destinations:\n  - name: a\n    url: http://x/\n    health_url: x.local/health\n",
         "destinations.a.health_url: 'x.local/health' has no scheme"),
        ("destinations:\n  - name: a\n    url: http://x/\n    auth:\n      type: oauth2_client_credentials\n"
         "      token_url: 'http://u:p@x/t'\n      client_id: c\n      client_secret_env: S\n",
         "destinations.a.auth.token_url: credentials in the URL are not allowed; use auth (line 6)"),
        ("destinations: []\nescalation:\n  alertmanager_url: am:9093\n",
         "escalation.alertmanager_url: 'am:9093' has no scheme: write http:// or https:// before the host (line 3)"),
        ("service: {http_port: 8080}\ndestinations:\n  - name: a\n    url: http://x/\n  - name: a\n"
         "    url: http://y/\n",
         "destinations[1].name: destination 'a' is defined twice, first at line 3 (line 5)"),
    ],
)
def test_url_and_duplicate_errors_name_the_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={})
    assert str(err.value).startswith(f"{path}: {message}")


def test_bad_config_cli_exit_code_2(tmp_path: Path) -> None:
    path = write(tmp_path, "distribution:\n  timeout_secs: 3\n")
    result = cli(["--config", str(path), "queue", "stats"], env={"NO_COLOR": "1"})
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {path}: distribution.timeout_secs: unknown key (line 2)"


def test_run_takes_config_after_the_command_too(tmp_path: Path) -> None:
    """README.md, "Commands": `ms07 run [--config F]`, as well as `ms07 --config F run`."""
    path = write(tmp_path, "service:\n  concurrency: 0\n")
    result = cli(["run", "--config", str(path)], env={"NO_COLOR": "1"})
    assert result.exit_code == 2, result.output
    assert str(path) in result.output and "concurrency" in result.output
    assert "\n" not in result.output.strip()


def test_missing_config_file(tmp_path: Path) -> None:
    result = cli(["--config", str(tmp_path / "nope.yaml"), "queue", "stats"], env={})
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_secrets_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_SECRET", "s3cret")
    assert resolve_secret("T_SECRET", None, "x") == "s3cret"
    f = tmp_path / "secret"
    f.write_text("from-file\n")
    assert resolve_secret(None, str(f), "x") == "from-file"
    with pytest.raises(ConfigError, match="environment variable NOPE_NOT_SET is not set"):
        resolve_secret("NOPE_NOT_SET", None, "dest.auth")


def test_unreachable_services_hide_passwords(tmp_path: Path) -> None:
    env = {"MS07_DATABASE_URL": "postgresql://app:hunter22@127.0.0.1:1/db", "MS07_REDIS_URL": "redis://:hunter22@127.0.0.1:1/0"}
    result = cli(["db", "migrate"], env=env)
    assert result.exit_code == 3
    assert "hunter22" not in result.output and "cannot connect to PostgreSQL" in result.output
    result = cli(["queue", "stats"], env={**env, "MS07_DATABASE_URL": ""})
    assert result.exit_code == 3
    assert "hunter22" not in result.output and "cannot connect to Redis" in result.output


def test_redact_url() -> None:
    assert redact_url("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert redact_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("postgresql://h/db?password=pw&sslmode=require") == "postgresql://h/db?password=***&sslmode=require"
    assert redact_url("http://h/x") == "http://h/x"


@pytest.mark.parametrize(
    "entry, message",
    [
        ("timeout_seconds: 0", "destinations.a.timeout_seconds: must be positive, got 0 (line 4)"),
        ("max_attempts: 0", "destinations.a.max_attempts: must be between 1 and 2147483647, got 0 (line 4)"),
        ("connect_timeout_seconds: -1", "destinations.a.connect_timeout_seconds: must be positive, got -1 (line 4)"),
        ("retry_base_delay_seconds: 0", "destinations.a.retry_base_delay_seconds: must be positive, got 0 (line 4)"),
        ("retry_backoff_multiplier: 0.5",
         "destinations.a.retry_backoff_multiplier: must be at least 1, got 0.5 (line 4)"),
        ("max_payload_bytes: 0", "destinations.a.max_payload_bytes: must be between 1 and 1073741823, got 0 (line 4)"),
        ("circuit_breaker: {failure_threshold: 0}",
         "destinations.a.circuit_breaker.failure_threshold: must be at least 1, got 0 (line 4)"),
        ("pool: {keepalive_expiry: -1}", "destinations.a.pool.keepalive_expiry: must be at least 0, got -1 (line 4)"),
        ("rate_limit: {per_second: 5, burst: 0}",
         "destinations.a.rate_limit.burst: must be at least 1, got 0 (line 4)"),
    ],
)
def test_a_destination_number_out_of_range_is_refused_at_load(tmp_path: Path, entry: str, message: str) -> None:
    """A 0 used to pass: the engine then read it as "unset" (the global 60 s, 5 attempts)
    while diagnose reported 0. Now every number is in range or the load stops."""
    path = write(tmp_path, f"destinations:\n  - name: a\n    url: http://x/\n    {entry}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={})
    assert str(err.value) == f"{path}: {message}"


@pytest.mark.parametrize("text, message", [
    ("distribution:\n  max_retry_delay: 0\n", "distribution.max_retry_delay: must be positive, got 0 (line 2)"),
    ("circuit_breaker:\n  recovery_timeout: 0\n", "circuit_breaker.recovery_timeout: must be positive, got 0 (line 2)"),
    ("service:\n  probe_timeout_seconds: 0\n", "service.probe_timeout_seconds: must be positive (line 2)"),
])
def test_a_global_number_out_of_range_is_refused_at_load(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={})
    assert str(err.value) == f"{path}: {message}"


@pytest.mark.parametrize("entry", ["timeout_seconds: 0", "max_attempts: 0"])
def test_a_zero_timeout_or_attempts_stops_the_cli_with_exit_2(tmp_path: Path, entry: str) -> None:
    path = write(tmp_path, f"destinations:\n  - name: a\n    url: http://x/\n    {entry}\n")
    result = cli(["--config", str(path), "queue", "stats"], env={"NO_COLOR": "1"})
    assert result.exit_code == 2
    key = entry.split(":")[0]
    assert result.output.startswith(f"error: {path}: destinations.a.{key}: must be ")
    assert result.output.strip().endswith("got 0 (line 4)") and "\n" not in result.output.strip()


def test_resolved_destination_own_values_else_global_ones(tmp_path: Path) -> None:
    path = write(tmp_path, """
distribution: {timeout_seconds: 20, connect_timeout_seconds: 8, max_attempts: 7, claim_idle_seconds: 60}
circuit_breaker: {failure_threshold: 9, recovery_timeout: 30}
destinations:
  - name: own
    url: http://x/
    timeout_seconds: 5
    connect_timeout_seconds: 6
    max_attempts: 2
    max_payload_bytes: 100
    circuit_breaker: {failure_threshold: 2}
  - {name: global, url: 'http://y/'}
""")
    s = load_settings(path, environ={})
    own, other = s.resolved("own"), s.resolved("global")
    assert (own.timeout_seconds, own.connect_timeout_seconds, own.max_attempts, own.max_payload_bytes) == (5, 5, 2, 100)
    # A partial breaker keeps the section's other key, not the class default (60).
    assert (own.circuit_breaker.failure_threshold, own.circuit_breaker.recovery_timeout) == (2, 30)
    assert (other.timeout_seconds, other.connect_timeout_seconds, other.max_attempts) == (20, 8, 7)
    assert other.max_payload_bytes == s.distribution.max_payload_bytes
    assert other.circuit_breaker == s.circuit_breaker
    assert list(s.effective) == ["own", "global"]
    with pytest.raises(ConfigError, match="unknown destination 'nope'"):
        s.resolved("nope")


def test_moved_diagnose_keys_still_work_and_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "diagnose:\n  stuck_after_minutes: 20\n  stale_worker_minutes: 2\n"
                           "  probe_timeout_seconds: 1.5\n")
    with caplog.at_level("WARNING", logger="ms07.config"):
        s = load_settings(path, environ={})
    assert (s.service.stale_worker_minutes, s.service.probe_timeout_seconds) == (2.0, 1.5)
    assert s.diagnose.stuck_after_minutes == 20.0
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: diagnose.stale_worker_minutes (line 3) is deprecated: set service.stale_worker_minutes instead",
        f"{path}: diagnose.probe_timeout_seconds (line 4) is deprecated: set service.probe_timeout_seconds instead",
    ]
    assert all(r.levelname == "WARNING" for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="ms07.config"):
        s = load_settings(None, environ={"MS07_DIAGNOSE__PROBE_TIMEOUT_SECONDS": "4"})
    assert s.service.probe_timeout_seconds == 4.0
    assert [r.getMessage() for r in caplog.records] == [
        "MS07_DIAGNOSE__PROBE_TIMEOUT_SECONDS: diagnose.probe_timeout_seconds is deprecated: "
        "set MS07_SERVICE__PROBE_TIMEOUT_SECONDS instead"]
    # A bad old value is still one line, under the variable that set it.
    with pytest.raises(ConfigError, match="^MS07_DIAGNOSE__PROBE_TIMEOUT_SECONDS: service.probe_timeout_seconds: "
                                         "expected a number"):
        load_settings(None, environ={"MS07_DIAGNOSE__PROBE_TIMEOUT_SECONDS": "fast"})


def test_new_keys_load_silently_and_both_spellings_are_refused(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="ms07.config"):
        s = load_settings(write(tmp_path, "service: {stale_worker_minutes: 3}\n"), environ={})
    assert s.service.stale_worker_minutes == 3.0 and not caplog.records
    path = write(tmp_path, "service: {probe_timeout_seconds: 2}\ndiagnose:\n  probe_timeout_seconds: 2\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={})
    assert str(err.value) == (f"{path}: diagnose.probe_timeout_seconds (line 3) and service.probe_timeout_seconds "
                              "are the same setting: remove diagnose.probe_timeout_seconds")
