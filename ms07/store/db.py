"""Connections, the pool, and the numbered-migration runner."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from ms07 import logs
from ms07.config import redact_url
from ms07.errors import DependencyUnavailable

# Serialises migrations when several pods start at once.
_MIGRATION_LOCK = 0x6D733037  # "ms07"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
log = logs.get("migrations")


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


# A migration whose first line is this runs outside a transaction, one statement at a
# time: for CREATE INDEX CONCURRENTLY, which builds an index on a big table while writes
# go on (in a transaction, a plain CREATE INDEX holds them back for the whole build). Such
# a migration holds only ``CREATE [UNIQUE] INDEX CONCURRENTLY IF NOT EXISTS`` statements,
# so that one stopped half-way (a crash, a cancel, a deploy) can simply run again.
NO_TRANSACTION = "-- ms07: no-transaction"
_CONCURRENT_INDEX = re.compile(
    r"^CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+IF\s+NOT\s+EXISTS\s+([a-z0-9_]+)\s+ON\s", re.I)


def outside_transaction(sql: str) -> bool:
    return sql.lstrip().startswith(NO_TRANSACTION)


def concurrent_statements(name: str, sql: str) -> list[tuple[str, str]]:
    """(index name, statement) of a no-transaction migration, in order; anything but a
    concurrent, idempotent index build is refused (ValueError)."""
    text = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    out = []
    for statement in (s.strip() for s in text.split(";")):
        if not statement:
            continue
        match = _CONCURRENT_INDEX.match(statement)
        if match is None:
            raise ValueError(f"migration {name} runs outside a transaction and may only hold "
                             f"CREATE INDEX CONCURRENTLY IF NOT EXISTS statements: {statement[:80]!r}")
        out.append((match.group(1), statement))
    return out


async def _build_concurrently(conn: psycopg.AsyncConnection[Any], index: str, statement: str) -> None:
    """One concurrent index build. A build that was interrupted (its connection killed,
    cancelled, a deadlock) leaves the index in the catalog marked INVALID: written to,
    never read, and IF NOT EXISTS would take it for done. Drop it and build it again."""
    cur = await conn.execute(
        "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%s)", (index,))
    row = await cur.fetchone()
    if row is not None and not row[0]:
        log.warning("dropping an index an interrupted build left invalid, to build it again", index=index)
        await conn.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{index}"'.encode())
    await conn.execute(statement.encode())


async def _lock(conn: psycopg.AsyncConnection[Any]) -> None:
    """The migration lock, asked for again every 0.2 s rather than waited for: a session
    blocked in pg_advisory_lock() holds a snapshot, and a concurrent index build (which
    waits for every older snapshot) under the lock holder would wait for it: a deadlock."""
    while True:
        cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (_MIGRATION_LOCK,))
        row = await cur.fetchone()
        if row and row[0]:
            return
        await asyncio.sleep(0.2)


async def migrate(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    """Apply pending migrations, each in its own transaction (or, marked
    ``NO_TRANSACTION``, statement by statement); return what was applied."""
    applied: list[str] = []
    await conn.set_autocommit(True)
    await _lock(conn)
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
            if outside_transaction(sql):
                for index, statement in concurrent_statements(f"{version:04d}_{name}", sql):
                    await _build_concurrently(conn, index, statement)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name)
                )
                applied.append(f"{version:04d}_{name}")
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
