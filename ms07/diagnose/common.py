"""Small helpers the checks share: rows as dicts, numbers as text.

What a destination actually gets (timeouts, retries, breaker) is ``settings.resolved(name)``."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row


async def rows(
    conn: psycopg.AsyncConnection[Any], sql: str, params: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params or {})
        return list(await cur.fetchall())


def num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{float(value):.{digits}f}"
