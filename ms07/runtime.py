"""The async resources a command or the engine needs, opened lazily in one event loop.

``Runtime`` resolves where PostgreSQL and Redis are (the settings, else the embedded
servers), opens the pool and the Redis client on first use, and closes what it opened.
Only a runtime made with ``create=True`` (``ms07 run``, ``ms07 db migrate``) starts
embedded servers and creates the schema; every other one attaches to what runs and
refuses a database without the ms07 schema (:class:`~ms07.errors.NoSchema`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from ms07 import embedded
from ms07.config import Settings, redact_url
from ms07.errors import NoSchema
from ms07.queue import Queue, open_redis
from ms07.store import db


def sources(settings: Settings) -> str:
    """Which PostgreSQL and Redis a command reads, without a password and without
    connecting: ``PostgreSQL embedded at /x/postgres; Redis redis://host:6379/0``."""
    state = settings.resolved_state_dir()
    pg = redact_url(settings.database_url) if settings.database_url else f"embedded at {state / 'postgres'}"
    rd = redact_url(settings.redis_url) if settings.redis_url else f"embedded at {state / 'redis'}"
    return f"PostgreSQL {pg}; Redis {rd}"


class Runtime:
    def __init__(self, settings: Settings, *, pool_size: int = 4, migrate: bool = False,
                 check_connections: bool = True, create: bool = False, require_schema: bool = True) -> None:
        """``create``: start the embedded servers if they are not running (else attach only);
        ``migrate``: apply pending migrations when the pool opens (needs ``create``);
        ``require_schema``: without ``migrate``, refuse a database with no ms07 schema."""
        self.settings = settings
        self.pool_size = pool_size
        self.check_connections = check_connections
        self.create = create
        self.auto_migrate = migrate and create
        self.require_schema = require_schema
        self._database_url = settings.database_url
        self._redis_url = settings.redis_url
        self._pool: AsyncConnectionPool | None = None
        self._redis: aioredis.Redis | None = None
        self._queue: Queue | None = None
        self.embedded_used: dict[str, str] = {}
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ where

    @property
    def database_url(self) -> str:
        if not self._database_url:
            state = self.settings.resolved_state_dir()
            self._database_url = embedded.start_postgres(state) if self.create else embedded.attach_postgres(state)
            self.embedded_used["postgres"] = self._database_url
        return self._database_url

    @property
    def redis_url(self) -> str:
        if not self._redis_url:
            state = self.settings.resolved_state_dir()
            self._redis_url = embedded.start_redis(state) if self.create else embedded.attach_redis(state)
            self.embedded_used["redis"] = self._redis_url
        return self._redis_url

    # ------------------------------------------------------------------ PostgreSQL

    async def pool(self) -> AsyncConnectionPool:
        async with self._lock:  # two first callers must not open two pools
            if self._pool is None:
                url = self.database_url
                if self.auto_migrate:
                    await self.migrate()
                elif self.require_schema:
                    await self.check_schema()
                self._pool = await db.open_pool(url, min_size=min(2, self.pool_size), max_size=self.pool_size,
                                                check=self.check_connections)
        return self._pool

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        pool = await self.pool()
        async with pool.connection() as conn:
            yield conn

    async def check_schema(self) -> int:
        """The schema version; :class:`NoSchema` when the database has none."""
        conn = await db.connect(self.database_url)
        try:
            version = await db.schema_version(conn)
        finally:
            await conn.close()
        if version is None:
            raise NoSchema(
                f"the database at {redact_url(self.database_url)} has no ms07 schema (nothing was ever "
                "delivered through it, or this is the wrong database): check MS07_DATABASE_URL / "
                "MS07_STATE_DIR; `ms07 db migrate` creates the schema"
            )
        return version

    async def migrate(self) -> list[str]:
        conn = await db.connect(self.database_url)
        try:
            return await db.migrate(conn)
        finally:
            await conn.close()

    # ------------------------------------------------------------------ Redis

    async def redis(self) -> aioredis.Redis:
        async with self._lock:
            if self._redis is None:
                self._redis = await open_redis(self.redis_url)
        return self._redis

    async def queue(self) -> Queue:
        if self._queue is None:
            self._queue = Queue(await self.redis(), self.settings.distribution.priorities)
        return self._queue

    # ------------------------------------------------------------------ close

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
            self._queue = None

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
