"""The settings a destination actually gets, resolved once.

A destination may set its own timeout, retry schedule, attempts, payload limit and
circuit breaker; what it leaves unset comes from ``distribution`` and ``circuit_breaker``.
That choice is made here and nowhere else: the engine, the registry, submit and diagnose
all read :class:`ResolvedDestination` (``settings.resolved(name)``), so they cannot
disagree about what a destination gets.

The ranges every such number must fall in live here too (:data:`RANGES`): the loader
refuses a value outside them with one line naming the key, rather than some reader
treating ``0`` as "unset" and another as zero.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from ms07.config import (
    AuthConfig,
    BatchConfig,
    CircuitBreakerConfig,
    DestinationConfig,
    PoolConfig,
    RateLimitConfig,
    Settings,
    SigningConfig,
)

# PostgreSQL stores one field (the payload's bytea) of at most 1 GiB - 1 byte.
MAX_PAYLOAD_BYTES = 0x3FFFFFFF
PG_INTEGER_MAX = 2**31 - 1


@dataclass(frozen=True)
class ResolvedDestination:
    """One destination as the engine runs it: every number final, none optional."""

    name: str
    url: str
    health_url: str | None
    enabled: bool
    method: str
    headers: dict[str, str]
    auth: AuthConfig
    signing: SigningConfig | None
    pool: PoolConfig
    batch: BatchConfig | None
    rate_limit: RateLimitConfig | None
    timeout_seconds: float
    connect_timeout_seconds: float  # never above timeout_seconds
    max_attempts: int
    retry_base_delay_seconds: float
    retry_backoff_multiplier: float
    max_retry_delay: float
    max_payload_bytes: int
    circuit_breaker: CircuitBreakerConfig
    auto_pause_after: float | None = None  # None: never paused by itself


def resolve(settings: Settings, dest: DestinationConfig) -> ResolvedDestination:
    """``dest``'s own value where it sets one, else the global one. Load time has already
    filled a destination's partial ``circuit_breaker`` from the global section."""
    dist = settings.distribution

    def own(value: Any, default: Any) -> Any:
        return default if value is None else value

    timeout = own(dest.timeout_seconds, dist.timeout_seconds)
    return ResolvedDestination(
        name=dest.name,
        url=dest.url,
        health_url=dest.health_url,
        enabled=dest.enabled,
        method=dest.method,
        headers=dest.headers,
        auth=dest.auth,
        signing=dest.signing,
        pool=dest.pool,
        batch=dest.batch,
        rate_limit=dest.rate_limit,
        timeout_seconds=timeout,
        connect_timeout_seconds=min(own(dest.connect_timeout_seconds, dist.connect_timeout_seconds), timeout),
        max_attempts=own(dest.max_attempts, dist.max_attempts),
        retry_base_delay_seconds=own(dest.retry_base_delay_seconds, dist.retry_base_delay_seconds),
        retry_backoff_multiplier=own(dest.retry_backoff_multiplier, dist.retry_backoff_multiplier),
        max_retry_delay=own(dest.max_retry_delay, dist.max_retry_delay),
        max_payload_bytes=own(dest.max_payload_bytes, dist.max_payload_bytes),
        circuit_breaker=dest.circuit_breaker or settings.circuit_breaker,
        auto_pause_after=own(dest.auto_pause_after, dist.auto_pause_after),
    )


# ------------------------------------------------------------------------- ranges


@dataclass(frozen=True)
class Range:
    low: float
    high: float | None = None
    low_open: bool = False  # True: the value must exceed ``low``

    def problem(self, value: float) -> str | None:
        too_low = value <= self.low if self.low_open else value < self.low
        if not too_low and (self.high is None or value <= self.high):
            return None
        low, got = _num(self.low), _num(value)
        if self.high is not None:
            return f"must be between {low} and {_num(self.high)}, got {got}"
        if self.low_open:
            return f"must be positive, got {got}" if self.low == 0 else f"must exceed {low}, got {got}"
        return f"must be at least {low}, got {got}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


POSITIVE = Range(0, low_open=True)
# Every number a destination's settings hold, by key, with the same range for the global
# counterpart (``distribution.<key>``, ``circuit_breaker.<key>``). The timeout has one
# more rule, checked by the loader: it stays below ``distribution.claim_idle_seconds``.
RANGES: dict[str, Range] = {
    "timeout_seconds": POSITIVE,
    "connect_timeout_seconds": POSITIVE,  # above timeout_seconds: capped to it
    "max_attempts": Range(1, PG_INTEGER_MAX),  # jobs.max_attempts is an integer column
    "retry_base_delay_seconds": POSITIVE,  # zero would retry a failing destination in a tight loop
    "retry_backoff_multiplier": Range(1),  # below 1 the delays would shrink
    "max_retry_delay": POSITIVE,
    "max_payload_bytes": Range(1, MAX_PAYLOAD_BYTES),
    "failure_threshold": Range(1),
    "recovery_timeout": POSITIVE,
    "max_connections": Range(1),
    "max_keepalive_connections": Range(0),
    "keepalive_expiry": Range(0),
    "max_items": Range(1, 10000),
    "max_wait_ms": Range(0),
    "max_concurrent": Range(1),
    "per_second": POSITIVE,
    "burst": Range(1),
    "refresh_margin_seconds": Range(0),
    "auto_pause_after": POSITIVE,
}


def range_problems(settings: Settings) -> typing.Iterator[tuple[str, str]]:
    """(key, message) of every destination number, or global counterpart, out of range,
    in file order: the global sections first, then each destination."""
    yield from _walk(settings.distribution, "distribution")
    yield from _walk(settings.circuit_breaker, "circuit_breaker")
    for dest in settings.destinations:
        yield from _walk(dest, f"destinations.{dest.name}")


def _walk(obj: Any, prefix: str) -> typing.Iterator[tuple[str, str]]:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _walk(value, f"{prefix}.{f.name}")
        elif f.name in RANGES and isinstance(value, int | float) and not isinstance(value, bool):
            problem = RANGES[f.name].problem(value)
            if problem is not None:
                yield f"{prefix}.{f.name}", problem
