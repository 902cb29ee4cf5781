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
    assert d.auth.redacted() == {"type": "bearer", "token_env": "MS09_TOKEN", "token_auth_method": "client_secret_basic",
                                 "refresh_margin_seconds": 30.0}


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
        ("distribution:\n  timeout_seconds: fast\n", "distribution.timeout_seconds: expected a number, got 'fast' (line 2)"),
        ("distribution: {claim_idle_seconds: 10, timeout_seconds: 60}\n", "distribution.claim_idle_seconds: must exceed"),
        ("destinations:\n  - name: a\n", "destinations[0].url: is required"),
        ("destinations:\n  - {name: a, url: 'ftp://x'}\n", "is not an http(s) URL"),
        ("destinations:\n  - {name: a, url: 'http://u:p@x'}\n", "credentials in the URL are not allowed"),
        ("destinations:\n  - {name: a, url: 'http://x'}\n  - {name: a, url: 'http://y'}\n", "defined twice"),
        ("destinations:\n  - {name: a, url: 'http://x', auth: {type: magic}}\n", "auth.type: must be one of"),
        ("destinations:\n  - {name: a, url: 'http://x', auth: {type: bearer}}\n", "auth.token_env: is required"),
        ("destinations:\n  - {name: a, url: 'http://x', timeout_seconds: 120}\n", "is not below distribution.claim_idle_seconds"),
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
