"""Settings: a YAML file (``--config`` / ``MS07_CONFIG``) overlaid by ``MS07_*`` variables.

Everything is validated at load. A bad file gives one ``ConfigError`` line that names the
key and, where the YAML parser knows it, the file and line. Secrets never live in the
settings: they are *references* (``token_env`` / ``token_file``) resolved at use time by
:func:`resolve_secret`.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import logging
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import yaml

from ms07.errors import ConfigError

if TYPE_CHECKING:
    from ms07.resolved import ResolvedDestination

ENV_PREFIX = "MS07_"
AUTH_TYPES = ("none", "bearer", "api_key", "basic", "oauth2_client_credentials")


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class PoolConfig:
    max_connections: int = 50
    max_keepalive_connections: int = 20
    keepalive_expiry: float = 30.0


@dataclass(frozen=True)
class BatchConfig:
    max_items: int = 100
    max_wait_ms: int = 50
    max_concurrent: int = 10


@dataclass(frozen=True)
class SigningConfig:
    secret_env: str | None = None
    secret_file: str | None = None
    previous_secret_env: str | None = None
    previous_secret_file: str | None = None


@dataclass(frozen=True)
class RateLimitConfig:
    per_second: float = 0.0
    burst: int | None = None


@dataclass(frozen=True)
class CircuitBreakerConfig:
    failure_threshold: int = 5
    recovery_timeout: float = 60.0


@dataclass(frozen=True)
class AuthConfig:
    type: str = "none"
    token_env: str | None = None
    token_file: str | None = None
    header: str | None = None
    value_env: str | None = None
    value_file: str | None = None
    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    token_url: str | None = None
    client_id: str | None = None
    client_secret_env: str | None = None
    client_secret_file: str | None = None
    scope: str | None = None
    audience: str | None = None
    token_auth_method: str = "client_secret_basic"
    refresh_margin_seconds: float = 30.0

    def redacted(self) -> dict[str, Any]:
        """The auth reference as shown to humans: names of env vars and files, no values."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class DestinationConfig:
    name: str
    url: str
    health_url: str | None = None
    enabled: bool = True
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)
    auth: AuthConfig = field(default_factory=AuthConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    batch: BatchConfig | None = None
    signing: SigningConfig | None = None
    rate_limit: RateLimitConfig | None = None
    timeout_seconds: float | None = None
    connect_timeout_seconds: float | None = None
    max_attempts: int | None = None
    retry_base_delay_seconds: float | None = None
    retry_backoff_multiplier: float | None = None
    max_retry_delay: float | None = None
    max_payload_bytes: int | None = None
    auto_pause_after: float | None = None
    # None: the global section. From a file, the keys a destination leaves out are the
    # global section's (load_settings fills them in).
    circuit_breaker: CircuitBreakerConfig | None = None

    def public(self) -> dict[str, Any]:
        """The configuration as stored in ``destinations.configuration``: no secret values."""
        data = dataclasses.asdict(self)
        data["auth"] = self.auth.redacted()
        return data


@dataclass(frozen=True)
class ServiceConfig:
    http_port: int = 8080
    # Unset: every interface when an API token guards the API (a pod serves its probes and
    # the API on its own IP), loopback only when none does (see api_listen).
    http_host: str | None = None
    # Without an API token the engine refuses to start unless this is true; then it warns.
    allow_unauthenticated: bool = False
    drain_grace_seconds: float = 30.0
    concurrency: int = 64
    prefetch: float = 16.0
    heartbeat_interval_seconds: float = 10.0
    heartbeat_ttl_seconds: int = 60
    health_check_interval_seconds: float = 30.0
    # Each stage of a destination probe: the engine's health checks (twice this, at most
    # 5 s), ``destinations check`` and diagnose's live probes.
    probe_timeout_seconds: float = 3.0
    # A worker silent this long is stale (/health/ready, diagnose); 3x: marked dead.
    stale_worker_minutes: float = 5.0
    debug_memory: bool = False
    # A batch submit (POST /api/v1/distributions {"distributions": [...]}): at most this many
    # items, and a body of at most max_batch_bytes (None: the single-submission limit, the
    # largest max_payload_bytes plus 64 KiB) -- the server never reads more than it says.
    max_batch_items: int = 100
    max_batch_bytes: int | None = None
    api_token_file: str | None = None
    # A second token that may read the API and the console but not act (403 on every
    # state-changing route); MS07_API_READ_TOKEN overrides the file.
    read_only_token_file: str | None = None
    # The console's session cookie lives this long (then the login form again).
    console_session_hours: float = 8.0
    # The console's public base URL (https://ms07.example.com): put before the console path
    # the log lines an operator acts on carry (a parked job, a paused destination); None:
    # the path alone.
    console_url: str | None = None
    worker_id: str | None = None
    # PostgreSQL holds the destinations (docs/operations.md, "Destinations at runtime"):
    # true applies this file's destinations: list at every start (GitOps); false lets the
    # database win, the list only seeding an empty table (an API-driven team).
    apply_config: bool = False
    # Held jobs of a resumed destination are released at most this fast, per engine.
    resume_rate_per_second: float = 200.0


@dataclass(frozen=True)
class DistributionConfig:
    timeout_seconds: float = 60.0
    connect_timeout_seconds: float = 10.0
    retry_base_delay_seconds: float = 1.0
    retry_backoff_multiplier: float = 2.0
    max_retry_delay: float = 300.0
    max_attempts: int = 5
    max_payload_bytes: int = 10 * 1024 * 1024
    # Seconds in which every attempt to a destination failed before it is paused by
    # itself; None: never.
    auto_pause_after: float | None = None
    stream_threshold_bytes: int = 1024 * 1024
    claim_idle_seconds: float = 90.0
    max_deliveries: int = 3
    reconcile_interval_seconds: float = 60.0
    reconcile_after_seconds: float = 300.0
    replay_resume_interval_seconds: float = 10.0
    scheduler_interval_seconds: float = 0.5
    read_batch: int = 200
    default_priority: str = "default"
    priorities: list[str] = field(default_factory=lambda: ["default"])


@dataclass(frozen=True)
class MemoryConfig:
    threshold_mb: float = 1024.0
    check_interval_seconds: float = 5.0


@dataclass(frozen=True)
class NetworkConfig:
    deny_private: bool = False
    allow_cidrs: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DiagnoseConfig:
    stuck_after_minutes: float = 30.0
    stale_health_minutes: float = 10.0
    p95_threshold_ms: float = 500.0
    rss_growth_warning_percent: float = 20.0
    token_expiry_warning_hours: float = 24.0
    # Open jobs younger than this are not yet "lost" (the XADD follows the INSERT).
    lost_grace_seconds: float = 120.0
    queue_depth_warning: int = 10000
    failure_rate_warning_percent: float = 10.0
    # An RSS trend is judged only over at least this much history.
    rss_trend_min_minutes: float = 10.0


@dataclass(frozen=True)
class EscalationConfig:
    alertmanager_url: str | None = None
    min_severity: str = "critical"
    priorities: dict[str, str] = field(
        default_factory=lambda: {"critical": "P1", "warning": "P3", "info": "P4"}
    )
    teams: dict[str, str] = field(
        default_factory=lambda: {
            "timeouts": "sre",
            "latency": "sre",
            "auth": "backend",
            "queue": "backend",
            "memory": "sre",
            "health": "devops",
        }
    )
    # Runbook of each check, sent as the alert's ``runbook`` annotation.
    runbooks: dict[str, str] = field(
        default_factory=lambda: {
            "timeouts": "timeouts",
            "latency": "high-latency",
            "auth": "auth-failures",
            "queue": "queue-message-loss",
            "memory": "memory-leak",
        }
    )


@dataclass(frozen=True)
class RetentionConfig:
    """How long finished jobs, their attempts and their payloads are kept.

    An age is in days; ``0`` or ``null`` keeps forever. Open jobs are never removed."""

    delivered_days: float | None = 7.0
    dead_days: float | None = 30.0  # failed and dead (parked) jobs
    # Attempts of finished jobs older than this go before their job; null: with their job.
    attempts_days: float | None = None
    # Payloads of finished jobs older than this are expunged (the row stays); null: with the row.
    payload_days: float | None = None
    interval_seconds: float = 300.0
    batch_size: int = 1000
    batch_pause_seconds: float = 0.1
    lock_timeout_ms: int = 2000
    statement_timeout_ms: int = 30000

    @property
    def off(self) -> bool:
        """Nothing is ever removed: every age keeps forever."""
        return all(not a for a in (self.delivered_days, self.dead_days, self.attempts_days, self.payload_days))


@dataclass(frozen=True)
class Settings:
    """Every setting of ms07, validated. Build with :func:`load_settings`."""

    service: ServiceConfig = field(default_factory=ServiceConfig)
    distribution: DistributionConfig = field(default_factory=DistributionConfig)
    circuit_breaker: CircuitBreakerConfig = field(default_factory=CircuitBreakerConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    diagnose: DiagnoseConfig = field(default_factory=DiagnoseConfig)
    escalation: EscalationConfig = field(default_factory=EscalationConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    destinations: list[DestinationConfig] = field(default_factory=list)
    # Connection and process settings, normally from the environment.
    database_url: str | None = None
    redis_url: str | None = None
    state_dir: str | None = None
    log_level: str = "INFO"
    log_format: str = "auto"  # auto: console at a terminal, JSON lines otherwise (containers)
    k8s_namespace: str | None = None  # None: the pod's own namespace, else the kubeconfig context's
    k8s_deployment: str = "ms07-distributor"
    k8s_label_selector: str | None = None
    health_url: str | None = None
    source: str | None = None

    def destination(self, name: str) -> DestinationConfig:
        for dest in self.destinations:
            if dest.name == name:
                return dest
        raise ConfigError(f"unknown destination {name!r}")

    @property
    def destination_names(self) -> list[str]:
        return [d.name for d in self.destinations]

    @functools.cached_property
    def effective(self) -> dict[str, ResolvedDestination]:
        """Every destination with the settings it actually gets (see ms07.resolved), in
        file order. Built once per Settings: by load_settings, which validates them."""
        from ms07.resolved import resolve

        return {d.name: resolve(self, d) for d in self.destinations}

    def resolved(self, name: str) -> ResolvedDestination:
        try:
            return self.effective[name]
        except KeyError:
            raise ConfigError(f"unknown destination {name!r}") from None

    def api_token(self, *, strict: bool = False) -> str | None:
        """The bearer token guarding /health and /api, from MS07_API_TOKEN or a file.

        ``strict`` (the engine guarding its API): a source that is configured but empty
        is a ConfigError, as an unreadable file always is. An engine whose Secret was
        mounted empty would otherwise start with its API open to anyone. Clients (the
        CLI sending the token) take an empty source as no token."""
        env = os.environ.get("MS07_API_TOKEN")
        if env is not None and (env.strip() or strict):
            if not env.strip():
                raise ConfigError("MS07_API_TOKEN is set but empty: set the token, or unset the variable")
            return env.strip()
        if self.service.api_token_file:
            token = _read_secret_file(self.service.api_token_file, "service.api_token_file")
            if not token and strict:
                raise ConfigError(f"service.api_token_file: {self.service.api_token_file} is empty")
            return token or None
        return None

    def read_token(self, *, strict: bool = False) -> str | None:
        """The read-only token (``MS07_API_READ_TOKEN`` or ``service.read_only_token_file``):
        it may read the API and the console, never act. Same rules as :meth:`api_token`."""
        env = os.environ.get("MS07_API_READ_TOKEN")
        if env is not None and (env.strip() or strict):
            if not env.strip():
                raise ConfigError("MS07_API_READ_TOKEN is set but empty: set the token, or unset the variable")
            return env.strip()
        if self.service.read_only_token_file:
            token = _read_secret_file(self.service.read_only_token_file, "service.read_only_token_file")
            if not token and strict:
                raise ConfigError(f"service.read_only_token_file: {self.service.read_only_token_file} is empty")
            return token or None
        return None

    def api_listen(self) -> tuple[str | None, str]:
        """(token, host) of the engine's HTTP server, or a ConfigError saying why it must
        not start: no token and no ``service.allow_unauthenticated: true``. The host is
        ``service.http_host``, else every interface with a token and loopback without."""
        token = self.api_token(strict=True)
        if token is None and not self.service.allow_unauthenticated:
            raise ConfigError(
                "no API token: set MS07_API_TOKEN or service.api_token_file, or set "
                "service.allow_unauthenticated: true to serve the API without authentication"
            )
        default = "0.0.0.0" if token else "127.0.0.1"  # nosec B104 - guarded by the token
        return token, self.service.http_host or default

    def resolved_state_dir(self) -> Path:
        if self.state_dir:
            return Path(self.state_dir).expanduser()
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(base) / "ms07"

    def with_overrides(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------- secrets


def _read_secret_file(path: str, key: str) -> str:
    try:
        return Path(path).expanduser().read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read secret file {path}: {exc.strerror}") from None


# Secrets stored encrypted in PostgreSQL (ms07/secretbox.py), decrypted by the process that
# uses them, by reference name (``ms07-stored:<destination>/<field>``): ms07.ops.dest_admin
# fills it. Such a name can be no environment variable.
STORED_SECRETS: dict[str, str] = {}
STORED_PREFIX = "ms07-stored:"


def resolve_secret(env: str | None, file: str | None, what: str) -> str | None:
    """Read a secret named by an env var or a mounted file. Never logs or returns the name
    of a missing secret's value; a reference that resolves to nothing is a ConfigError."""
    if env and env.startswith(STORED_PREFIX):
        if env in STORED_SECRETS:
            return STORED_SECRETS[env]
        raise ConfigError(f"{what}: the secret stored in PostgreSQL is not loaded in this process "
                          "(is MS07_SECRET_KEY set?)")
    if env:
        value = os.environ.get(env)
        if value:
            return value
        if not file:
            raise ConfigError(f"{what}: environment variable {env} is not set")
    if file:
        return _read_secret_file(file, what)
    return None


# --------------------------------------------------------------------------- loading


class _LineLoader(yaml.SafeLoader):
    """A SafeLoader that remembers the line of every mapping key."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    mapping: dict[Any, Any] = {}
    lines: dict[Any, int] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str | int | float | bool) and key is not None:
            raise ConfigError(f"unhashable key at line {key_node.start_mark.line + 1}")
        if key in mapping:
            raise ConfigError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
        mapping[key] = loader.construct_object(value_node, deep=True)
        lines[key] = key_node.start_mark.line + 1
    return _Mapping(mapping, lines)


class _Mapping(dict):  # type: ignore[type-arg]
    """A dict that knows the source line of each of its keys."""

    def __init__(self, data: dict[Any, Any], lines: dict[Any, int]) -> None:
        super().__init__(data)
        self.lines = lines


_LineLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,  # type: ignore[arg-type]
)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML with line-aware mappings; errors become one ConfigError line."""
    try:
        # _LineLoader is a SafeLoader subclass: no Python objects are constructed.
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506  # nosec B506
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}:{where} invalid YAML: {problem}") from None


class _Converter:
    def __init__(self, source: str, origins: dict[str, str] | None = None) -> None:
        self.source = source
        self.origins = origins or {}  # key -> the MS07_* variable that set it
        self.lines: dict[str, int] = {}
        self.given: dict[str, set[str]] = {}  # path of a mapping -> the keys it set

    def fail(self, path: str, message: str, line: int | None) -> typing.NoReturn:
        if path in self.origins:  # the value came from the environment, not from the file
            raise ConfigError(_one_line(f"{self.origins[path]}: {path}: {message}"))
        where = f" (line {line})" if line else ""
        raise ConfigError(_one_line(f"{self.source}: {path}: {message}{where}"))

    def convert(self, tp: Any, value: Any, path: str, line: int | None) -> Any:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            inner = [a for a in args if a is not type(None)]
            return self.convert(inner[0], value, path, line)
        if dataclasses.is_dataclass(tp):
            return self.dataclass(tp, value, path, line)
        if origin is list:
            if not isinstance(value, list):
                self.fail(path, f"expected a list, got {_describe(value)}", line)
            return [self.convert(args[0], v, f"{path}[{i}]", line) for i, v in enumerate(value)]
        if origin is dict:
            if not isinstance(value, dict):
                self.fail(path, f"expected a mapping, got {_describe(value)}", line)
            lines = getattr(value, "lines", {})
            return {
                str(k): self.convert(args[1], v, f"{path}.{k}", lines.get(k, line))
                for k, v in value.items()
            }
        if tp is bool:
            if isinstance(value, bool):
                return value
            self.fail(path, f"expected true or false, got {_describe(value)}", line)
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(path, f"expected an integer, got {_describe(value)}", line)
            return value
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                self.fail(path, f"expected a number, got {_describe(value)}", line)
            if not math.isfinite(value):
                self.fail(path, f"expected a finite number, got {_describe(value)}", line)
            return float(value)
        if tp is str:
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                self.fail(path, f"expected a string, got {_describe(value)}", line)
            return str(value)
        raise TypeError(f"unsupported settings type {tp!r}")  # pragma: no cover

    def dataclass(self, cls: Any, value: Any, path: str, line: int | None) -> Any:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.fail(path or "<top>", f"expected a mapping, got {_describe(value)}", line)
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        lines = getattr(value, "lines", {})
        kwargs: dict[str, Any] = {}
        for key, item in value.items():
            key_path = f"{path}.{key}" if path else str(key)
            key_line = lines.get(key, line)
            if key_line:
                self.lines[key_path] = key_line
            if key not in names:
                self.fail(key_path, "unknown key", key_line)
            kwargs[key] = self.convert(hints[key], item, key_path, key_line)
        for f in dataclasses.fields(cls):
            if (
                f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING
                and f.name not in kwargs
            ):
                self.fail(f"{path}.{f.name}" if path else f.name, "is required", line)
        self.given[path] = set(kwargs)
        return cls(**kwargs)


def _one_line(text: str) -> str:
    """Keys and values from the file may hold line breaks; an error stays one line."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


_ENV_TOP = {
    "MS07_DATABASE_URL": "database_url",
    "MS07_REDIS_URL": "redis_url",
    "MS07_STATE_DIR": "state_dir",
    "MS07_LOG_LEVEL": "log_level",
    "MS07_LOG_FORMAT": "log_format",
    "MS07_K8S_NAMESPACE": "k8s_namespace",
    "MS07_K8S_DEPLOYMENT": "k8s_deployment",
    "MS07_K8S_LABEL_SELECTOR": "k8s_label_selector",
    "MS07_HEALTH_URL": "health_url",
}
# Three settings have a short spelling besides ``MS07_SERVICE__<KEY>``. They are the same
# knob: set to different values, neither silently wins (the order of os.environ would
# pick one), the load fails naming both.
ENV_ALIASES = {"MS07_HTTP_PORT": "MS07_SERVICE__HTTP_PORT", "MS07_HTTP_HOST": "MS07_SERVICE__HTTP_HOST",
               "MS07_CONCURRENCY": "MS07_SERVICE__CONCURRENCY"}
_ENV_IGNORED = {"MS07_CONFIG", "MS07_API_TOKEN", "MS07_API_READ_TOKEN"}  # read where they are used, never stored


def _env_overlay(data: dict[str, Any], environ: typing.Mapping[str, str]) -> dict[str, str]:
    """Apply MS07_* variables. ``MS07_<SECTION>__<KEY>`` sets any scalar of a section.

    Returns the variable that set each key (``service.http_port`` -> ``MS07_HTTP_PORT``)
    so that a bad value is reported under the variable's name, not the file's."""
    env = {k: v for k, v in environ.items() if k.startswith(ENV_PREFIX) and k not in _ENV_IGNORED and v != ""}
    named = {k: k for k in env}
    for short, long in ENV_ALIASES.items():
        if short not in env:
            continue
        if long in env and env[long].strip() != env[short].strip() and _scalar(env[long]) != _scalar(env[short]):
            raise ConfigError(_one_line(
                f"{short}={env[short][:40]!r} and {long}={env[long][:40]!r} set the same setting "
                f"differently; unset one"))
        named[long] = short if long not in env else long
        env[long] = env.pop(short)
        named.pop(short)
    origins: dict[str, str] = {}
    for name, value in env.items():
        if name in _ENV_TOP:
            data[_ENV_TOP[name]] = value
            origins[_ENV_TOP[name]] = named[name]
        elif "__" in name:
            section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
            if section not in {f.name for f in dataclasses.fields(Settings)}:
                continue
            current = data.get(section) or {}
            if not isinstance(current, dict):
                continue  # the file's section is not a mapping: the loader says so
            # Keep the file's key lines: an error in the file's part still names its line.
            current = _Mapping({**current, key: _scalar(value)}, getattr(current, "lines", {}))
            data[section] = current
            origins[f"{section}.{key}"] = named[name]
    return origins


def _scalar(value: str) -> Any:
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    return parsed if isinstance(parsed, str | int | float | bool) else value


def load_settings(
    path: str | os.PathLike[str] | None = None,
    environ: typing.Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Load and validate settings. ``path`` defaults to ``$MS07_CONFIG``; no file is fine."""
    environ = os.environ if environ is None else environ
    path = path or environ.get("MS07_CONFIG") or None
    data: dict[str, Any] = {}
    source = "environment"
    if path:
        source = str(path)
        try:
            text = Path(path).expanduser().read_text()
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        loaded = parse_yaml(text, source)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: the top level must be a mapping")
        data = loaded
    origins = _env_overlay(data, environ)
    data.update({k: v for k, v in overrides.items() if v is not None})
    for key in overrides:
        origins.pop(key, None)
    _move_deprecated(data, source, origins)
    converter = _Converter(source, origins)
    settings = converter.dataclass(Settings, data, "", None)
    settings = dataclasses.replace(settings, source=source, destinations=_inherit_breakers(settings, converter.given),
                                   k8s_namespace=settings.k8s_namespace or default_k8s_namespace(environ))
    validate(settings, source, converter.lines, origins)
    return settings


def _inherit_breakers(settings: Settings, given: dict[str, set[str]]) -> list[DestinationConfig]:
    """A destination's ``circuit_breaker`` names the keys it changes; the others are the
    global section's (not the class defaults)."""
    out = []
    for i, dest in enumerate(settings.destinations):
        if dest.circuit_breaker is not None:
            own = {k: getattr(dest.circuit_breaker, k) for k in given.get(f"destinations[{i}].circuit_breaker", ())}
            dest = dataclasses.replace(dest, circuit_breaker=dataclasses.replace(settings.circuit_breaker, **own))
        out.append(dest)
    return out


# Keys that moved: (old section, key) -> new section. The old spelling still works, with
# one WARNING line at load. Both spellings at once is an error: neither silently wins.
MOVED_KEYS = {("diagnose", "stale_worker_minutes"): "service", ("diagnose", "probe_timeout_seconds"): "service"}
_log = logging.getLogger("ms07.config")


def _move_deprecated(data: dict[str, Any], source: str, origins: dict[str, str]) -> None:
    for (old_section, key), new_section in MOVED_KEYS.items():
        old, new = data.get(old_section), data.get(new_section)
        if not isinstance(old, dict) or key not in old or not isinstance(new, dict | None):
            continue  # a section that is not a mapping: the converter says so
        old_key, new_key = f"{old_section}.{key}", f"{new_section}.{key}"
        old_line = getattr(old, "lines", {}).get(key)
        variable = origins.pop(old_key, None)
        if variable is not None:  # MS07_DIAGNOSE__<KEY>
            where, instead = f"{variable}: {old_key}", f"{ENV_PREFIX}{new_section.upper()}__{key.upper()}"
            origins[new_key] = variable
        else:
            where, instead = f"{source}: {old_key}" + (f" (line {old_line})" if old_line else ""), new_key
        new = new or {}
        if key in new:
            raise ConfigError(_one_line(f"{where} and {new_key} are the same setting: remove {old_key}"))
        _log.warning(_one_line(f"{where} is deprecated: set {instead} instead"))
        lines = {**getattr(new, "lines", {}), **({key: old_line} if old_line else {})}
        data[new_section] = _Mapping({**new, key: old[key]}, lines)
        data[old_section] = _Mapping({k: v for k, v in old.items() if k != key}, getattr(old, "lines", {}))


SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def default_k8s_namespace(environ: typing.Mapping[str, str]) -> str:
    """Where ``kubectl`` would look: the pod's own namespace in a cluster, else the current
    kubeconfig context's namespace, else ``default``. Read without importing kubernetes."""
    if environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            return Path(SERVICE_ACCOUNT_NAMESPACE).read_text().strip() or "default"
        except OSError:
            pass
    from ms07.kube.source import kubeconfig_file

    try:
        kubeconfig = yaml.safe_load(Path(kubeconfig_file(None, environ)).read_text()) or {}
        current = kubeconfig.get("current-context")
        for ctx in kubeconfig.get("contexts") or []:
            if ctx.get("name") == current:
                return (ctx.get("context") or {}).get("namespace") or "default"
    except (OSError, yaml.YAMLError, AttributeError, TypeError):
        pass
    return "default"


# --------------------------------------------------------------------------- validation


# A last label of digits or 0x-hex makes a host numeric to inet_aton (RFC 3696: no
# top-level domain is all-numeric), whatever its other labels say.
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)", re.IGNORECASE)
_HOST_NAME = re.compile(r"[a-z0-9_.-]+", re.IGNORECASE)


def host_problem(host: str) -> str | None:
    """Why ``host`` (as a URL carries it, brackets removed) is neither an ASCII host name
    nor a canonical IP literal, or None. The C library reads ``2130706433``, ``127.1``
    or ``0x7f.1`` as addresses a URL parser does not see; the SSRF guard uses this too."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if not _HOST_NAME.fullmatch(host):
        return f"{host!r} is not a host name (letters, digits, '-', '.')"
    if _NUMERIC_LABEL.fullmatch(host.rstrip(".").rsplit(".", 1)[-1]):
        return f"{host!r} is a numeric host but not a canonical IP address"
    return None


def _check_url(url: str, what: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port out of range
    except ValueError as exc:
        raise ConfigError(f"{what}: {redact_url(url)!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what}: {redact_url(url)!r} is not an http(s) URL")
    if parts.username or parts.password:
        raise ConfigError(f"{what}: credentials in the URL are not allowed; use auth")
    if not parts.hostname.isascii():
        # Refused, not converted: IDNA maps "①②⑦.0.0.1" to 127.0.0.1, and a config should say
        # where it sends data in the spelling the connection uses.
        raise ConfigError(f"{what}: host {parts.hostname!r} is not ASCII{_idna_hint(url)}; write the "
                          "host in ASCII (punycode xn--... for an internationalised name)")
    problem = host_problem(parts.hostname)
    if problem is not None:
        raise ConfigError(f"{what}: host {problem}")


def _idna_hint(url: str) -> str:
    try:
        from yarl import URL

        return f" (the HTTP client would connect to {URL(url).raw_host!r})"
    except ValueError:
        return ""


def validate(
    settings: Settings, source: str, lines: dict[str, int] | None = None, origins: dict[str, str] | None = None
) -> None:
    """Cross-field rules the types alone cannot express. ``origins``: keys set by MS07_*
    variables, reported under the variable's name."""
    lines = lines or {}
    origins = origins or {}
    index = {d.name: i for i, d in enumerate(settings.destinations)}

    def fail(key: str, message: str) -> typing.NoReturn:
        if key in origins:
            raise ConfigError(_one_line(f"{origins[key]}: {key}: {message}"))
        # Find the line of the key, or of its closest parent the parser saw.
        parts = key.split(".")
        if parts[0] == "destinations" and len(parts) > 1 and parts[1] in index:
            parts = [f"destinations[{index[parts[1]]}]", *parts[2:]]
        line = None
        while parts and line is None:
            line = lines.get(".".join(parts))
            parts.pop()
        where = f" (line {line})" if line else ""
        raise ConfigError(_one_line(f"{source}: {key}: {message}{where}"))

    def check_url(url: str, key: str) -> None:
        try:
            _check_url(url, key)
        except ConfigError as exc:  # the same message, with the file and the line
            message = str(exc).removeprefix(f"{key}: ")
            if "://" not in url:
                message = f"{redact_url(url)!r} has no scheme: write http:// or https:// before the host"
            fail(key, message)

    from ms07.resolved import range_problems

    dist = settings.distribution
    for key, problem in range_problems(settings):
        fail(key, problem)
    if not dist.replay_resume_interval_seconds > 0:
        fail("distribution.replay_resume_interval_seconds",
             f"must be positive, got {dist.replay_resume_interval_seconds:g}")
    if dist.claim_idle_seconds <= dist.timeout_seconds:
        fail(
            "distribution.claim_idle_seconds",
            f"must exceed timeout_seconds ({dist.timeout_seconds:g}) or a slow delivery "
            "is handed to a second worker while the first still runs",
        )
    for resolved in settings.effective.values():  # built here, once: what every reader gets
        if dist.claim_idle_seconds <= resolved.timeout_seconds:
            fail(
                f"destinations.{resolved.name}.timeout_seconds",
                f"{resolved.timeout_seconds:g}s is not below distribution.claim_idle_seconds "
                f"({dist.claim_idle_seconds:g})",
            )
    if dist.default_priority not in dist.priorities:
        fail("distribution.default_priority", f"must be one of {dist.priorities}")
    for p in dist.priorities:
        if not p or not p.replace("-", "").replace("_", "").isalnum():
            fail("distribution.priorities", f"{p!r} is not a valid queue name")
    if not 1 <= settings.service.concurrency <= 10000:
        fail("service.concurrency", "must be between 1 and 10000")
    if not 1 <= settings.service.prefetch <= 64:
        fail("service.prefetch", "must be between 1 and 64")
    if not settings.service.resume_rate_per_second > 0:
        fail("service.resume_rate_per_second", f"must be positive, got {settings.service.resume_rate_per_second:g}")
    if not 1 <= settings.service.max_batch_items <= 1000:
        fail("service.max_batch_items", f"must be between 1 and 1000, got {settings.service.max_batch_items}")
    batch_bytes = settings.service.max_batch_bytes
    if batch_bytes is not None and not 1024 <= batch_bytes <= 1024**3:
        fail("service.max_batch_bytes", f"must be between 1024 and {1024**3} (1 GiB), got {batch_bytes}")
    if not 0 <= settings.service.http_port <= 65535:
        fail("service.http_port", "must be a TCP port")
    if not 0.05 <= settings.service.console_session_hours <= 24 * 30:
        fail("service.console_session_hours", "must be between 0.05 and 720 (30 days)")
    if settings.service.console_url is not None:
        _check_console_url(settings.service.console_url, fail, check_url)
    if settings.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        fail("log_level", f"{settings.log_level!r} is not a log level")
    if settings.log_format not in ("auto", "json", "console"):
        fail("log_format", "must be auto, json or console")
    for cidr in settings.network.allow_cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            fail("network.allow_cidrs", f"{cidr!r} is not a CIDR range")
    _validate_diagnose(settings, fail, check_url)
    _validate_retention(settings.retention, fail)
    seen: dict[str, int] = {}
    for i, dest in enumerate(settings.destinations):
        key = f"destinations.{dest.name}"
        if not dest.name or not all(c.isalnum() or c in "-_." for c in dest.name):
            fail(f"destinations[{i}].name", f"{dest.name!r} is not a valid destination name")
        if dest.name in seen:
            first = lines.get(f"destinations[{seen[dest.name]}].name")
            fail(f"destinations[{i}].name", f"destination {dest.name!r} is defined twice"
                 + (f", first at line {first}" if first else ""))
        seen[dest.name] = i
        check_url(dest.url, f"{key}.url")
        if dest.health_url:
            check_url(dest.health_url, f"{key}.health_url")
        if dest.method.upper() not in ("POST", "PUT", "PATCH"):
            fail(f"{key}.method", "must be POST, PUT or PATCH")
        _validate_auth(dest, fail, check_url)
        if dest.signing and not (dest.signing.secret_env or dest.signing.secret_file):
            fail(f"{key}.signing", "needs secret_env or secret_file")
        for header in dest.headers:
            if header.lower() in ("authorization", "idempotency-key"):
                fail(f"{key}.headers.{header}", "is set by ms07; use auth instead")


def _validate_diagnose(settings: Settings, fail: typing.Callable[[str, str], Any],
                       check_url: typing.Callable[[str, str], Any]) -> None:
    for f in dataclasses.fields(DiagnoseConfig):
        if getattr(settings.diagnose, f.name) <= 0:
            fail(f"diagnose.{f.name}", "must be positive")
    for name in ("probe_timeout_seconds", "stale_worker_minutes"):
        if getattr(settings.service, name) <= 0:
            fail(f"service.{name}", "must be positive")
    esc = settings.escalation
    severities = ("info", "warning", "critical")
    if esc.min_severity not in severities:
        fail("escalation.min_severity", f"must be one of {', '.join(severities)}")
    if esc.alertmanager_url:
        check_url(esc.alertmanager_url, "escalation.alertmanager_url")
    for sev, prio in esc.priorities.items():
        if sev not in severities:
            fail(f"escalation.priorities.{sev}", f"unknown severity (one of {', '.join(severities)})")
        if prio not in ("P1", "P2", "P3", "P4"):
            fail(f"escalation.priorities.{sev}", f"{prio!r} is not a priority P1-P4")


def _check_console_url(url: str, fail: typing.Callable[[str, str], Any],
                       check_url: typing.Callable[[str, str], Any]) -> None:
    key = "service.console_url"
    check_url(url, key)
    parts = urlsplit(url)
    if parts.path not in ("", "/") or parts.query or parts.fragment or url.endswith(("?", "#")):
        fail(key, f"{url!r} must be the console's base URL, scheme and host only "
                  f"(like https://ms07.example.com): no path, query or fragment")


def _validate_retention(ret: RetentionConfig, fail: typing.Callable[[str, str], Any]) -> None:
    for name in ("delivered_days", "dead_days", "attempts_days", "payload_days"):
        age = getattr(ret, name)
        if age is not None and age < 0:
            fail(f"retention.{name}", f"must be 0 or more days (0 or null: keep forever), got {age:g}")
    for name in ("interval_seconds", "lock_timeout_ms", "statement_timeout_ms"):
        if getattr(ret, name) <= 0:
            fail(f"retention.{name}", "must be positive")
    if not 1 <= ret.batch_size <= 100000:
        fail("retention.batch_size", f"must be between 1 and 100000, got {ret.batch_size}")
    if ret.batch_pause_seconds < 0:
        fail("retention.batch_pause_seconds", "must be 0 or more")


def _validate_auth(dest: DestinationConfig, fail: typing.Callable[[str, str], Any],
                   check_url: typing.Callable[[str, str], Any]) -> None:
    auth = dest.auth
    key = f"destinations.{dest.name}.auth"
    if auth.type not in AUTH_TYPES:
        fail(f"{key}.type", f"must be one of {', '.join(AUTH_TYPES)}")
    need: dict[str, list[tuple[str, ...]]] = {
        "bearer": [("token_env", "token_file")],
        "api_key": [("header",), ("value_env", "value_file")],
        "basic": [("username",), ("password_env", "password_file")],
        "oauth2_client_credentials": [
            ("token_url",),
            ("client_id",),
            ("client_secret_env", "client_secret_file"),
        ],
    }
    for group in need.get(auth.type, []):
        if not any(getattr(auth, k) for k in group):
            fail(f"{key}.{group[0]}", f"is required for auth type {auth.type}")
    if auth.type == "oauth2_client_credentials" and auth.token_url:
        check_url(auth.token_url, f"{key}.token_url")
    if auth.token_auth_method not in ("client_secret_basic", "client_secret_post"):
        fail(f"{key}.token_auth_method", "must be client_secret_basic or client_secret_post")


def redact_url(url: str) -> str:
    """A URL with its userinfo password replaced by ``***`` (for logs and errors)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    if parts.password is None and "password=" not in (parts.query or ""):
        return url
    netloc = parts.netloc
    if parts.password is not None:
        user = parts.username or ""
        host = netloc.rsplit("@", 1)[1]
        netloc = f"{user}:***@{host}"
    query = "&".join(
        ("password=***" if q.startswith("password=") else q) for q in parts.query.split("&")
    ) if parts.query else ""
    return parts._replace(netloc=netloc, query=query).geturl()
