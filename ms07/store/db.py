"""Connections, the pool, and the numbered-migration runner."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from ms07.config import redact_url
from ms07.errors import DependencyUnavailable

# Serialises migrations when several pods start at once.
_MIGRATION_LOCK = 0x6D733037  # "ms07"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def describe_pg_error(exc: BaseException) -> str:
    """One line about a connection failure, with no password in it."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"password=\S+", "password=***", text)


async def connect(url: str, *, timeout: float = 5.0, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
    """One connection, with a clear error when PostgreSQL cannot be reached."""
    try:
        return await psycopg.AsyncConnection.connect(url, connect_timeout=max(1, int(timeout)), **kwargs)
    except psycopg.OperationalError as exc:
        raise DependencyUnavailable(
            f"cannot connect to PostgreSQL at {redact_url(url)}: {describe_pg_error(exc)}"
        ) from None


async def open_pool(
    url: str, *, min_size: int = 1, max_size: int = 10, timeout: float = 10.0, name: str = "ms07",
    check: bool = True,
) -> AsyncConnectionPool:
    """An open pool that reconnects after a restart.

    ``check`` tests each connection on checkout (one extra round trip): right for
    commands; the engine turns it off on its hot path, where a broken connection fails
    the statement, is discarded by the pool, and the statement is retried."""
    await _probe(url, timeout)
    pool = AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        open=False,
        name=name,
        timeout=timeout,
        check=AsyncConnectionPool.check_connection if check else None,
        reconnect_timeout=3600,
        kwargs={"connect_timeout": 5, "application_name": name},
    )
    await pool.open(wait=True, timeout=timeout)
    return pool


@asynccontextmanager
async def autocommit(conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """One statement in autocommit on a pooled connection: one round trip instead of
    three (BEGIN, statement, COMMIT). Switching is client-side; the connection goes back
    to the pool as it came, or closed if a cancellation left a statement running."""
    await conn.set_autocommit(True)
    try:
        yield conn
    finally:
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            await conn.set_autocommit(False)
        else:
            await conn.close()


async def _probe(url: str, timeout: float) -> None:
    conn = await connect(url, timeout=timeout)
    await conn.close()


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every bundled migration, in order."""
    found = []
    for entry in resources.files("ms07.store.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text()))
    return sorted(found)


async def migrate(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    """Apply pending migrations, each in its own transaction; return what was applied."""
    applied: list[str] = []
    await conn.set_autocommit(True)
    await conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        cur = await conn.execute("SELECT version FROM schema_migrations")
        done = {row[0] for row in await cur.fetchall()}
        for version, name, sql in migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql.encode())
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name)
                )
            applied.append(f"{version:04d}_{name}")
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    return applied


async def schema_version(conn: psycopg.AsyncConnection[Any]) -> int | None:
    try:
        cur = await conn.execute("SELECT max(version) FROM schema_migrations")
    except psycopg.errors.UndefinedTable:
        return None
    row = await cur.fetchone()
    return row[0] if row else None


__all__ = ["connect", "open_pool", "migrate", "migrations", "schema_version", "dict_row"]
