"""``recovery_audit``: every recover and runbook action, who ran it and how it ended."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb


async def record(
    conn: psycopg.AsyncConnection[Any],
    *,
    operator: str,
    plan_id: str,
    plan: str,
    step: str,
    outcome: str,
    step_index: int | None = None,
    command: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        """INSERT INTO recovery_audit (operator, plan_id, plan, step_index, step, command, outcome, detail)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
        (operator, plan_id, plan, step_index, step, command, outcome, Jsonb(detail or {})),
    )


async def entries(
    conn: psycopg.AsyncConnection[Any], plan_id: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        if plan_id:
            await cur.execute(
                "SELECT * FROM recovery_audit WHERE plan_id = %s ORDER BY id", (plan_id,)
            )
        else:
            await cur.execute("SELECT * FROM recovery_audit ORDER BY id DESC LIMIT %s", (limit,))
        return list(await cur.fetchall())
