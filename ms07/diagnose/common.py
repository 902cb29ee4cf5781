"""Small helpers the checks share: effective per-destination settings, rows as dicts."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from ms07.config import DestinationConfig, Settings


async def rows(conn: psycopg.AsyncConnection[Any], sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params or {})
        return list(await cur.fetchall())


def effective(settings: Settings, dest: DestinationConfig) -> dict[str, Any]:
    """The timeout, backoff and breaker settings the engine applies to ``dest``."""
    dist = settings.distribution

    def pick(own: Any, default: Any) -> Any:
        return default if own is None else own

    timeout = pick(dest.timeout_seconds, dist.timeout_seconds)
    cb = {
        "failure_threshold": settings.circuit_breaker.failure_threshold,
        "recovery_timeout": settings.circuit_breaker.recovery_timeout,
        **dest.circuit_breaker,
    }
    return {
        "timeout_seconds": timeout,
        "connect_timeout_seconds": min(pick(dest.connect_timeout_seconds, dist.connect_timeout_seconds), timeout),
        "retry_base_delay_seconds": pick(dest.retry_base_delay_seconds, dist.retry_base_delay_seconds),
        "retry_backoff_multiplier": pick(dest.retry_backoff_multiplier, dist.retry_backoff_multiplier),
        "max_retry_delay": pick(dest.max_retry_delay, dist.max_retry_delay),
        "max_attempts": int(pick(dest.max_attempts, dist.max_attempts)),
        "failure_threshold": int(cb["failure_threshold"]),
        "recovery_timeout": float(cb["recovery_timeout"]),
    }


def num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{float(value):.{digits}f}"
