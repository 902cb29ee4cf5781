"""The dependencies a diagnose run reaches, opened once and failing once.

A check asks for PostgreSQL or Redis through :class:`Context`. The first failure to
reach either is remembered, so the next parts of every check get the same one-line
reason at once instead of waiting for another connect timeout; :func:`part` turns it
into an UNKNOWN finding for that part and the check goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
from redis.exceptions import RedisError

from ms07.config import Settings
from ms07.diagnose.model import CheckResult
from ms07.diagnose.options import DiagnoseOptions
from ms07.errors import Ms07Error, NoSchema
from ms07.logs import clip
from ms07.queue import Queue, describe_redis_error
from ms07.runtime import Runtime
from ms07.store.db import describe_pg_error

STATEMENT_TIMEOUT_MS = 15000
CONNECT_TIMEOUT = 8.0


class Unavailable(Exception):
    """A dependency could not be reached (or answered with an error that says so)."""

    def __init__(self, dependency: str, reason: str, problem: str = "unreachable",
                 remedy: str = "", command: str = "") -> None:
        super().__init__(reason)
        self.dependency = dependency
        self.reason = reason
        self.problem = problem
        self.remedy = remedy
        self.command = command


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return clip(text, 300)


class Context:
    """Settings, options and lazily opened PostgreSQL/Redis for one diagnose run."""

    def __init__(self, settings: Settings, options: DiagnoseOptions, runtime: Runtime | None = None) -> None:
        self.settings = settings
        self.options = options
        self.runtime = runtime or Runtime(settings, pool_size=4, migrate=False)
        self._owns_runtime = runtime is None
        self._pg_lock = asyncio.Lock()
        self._redis_lock = asyncio.Lock()
        self._pg_error: str | None = None
        self._pg_detail: tuple[str, str, str] = ("unreachable", "", "")  # problem, remedy, command
        self._redis_error: str | None = None
        self._pool: Any = None
        self._queue: Queue | None = None

    # ------------------------------------------------------------------ PostgreSQL

    async def _get_pool(self) -> Any:
        # Runtime.pool() is not safe to call concurrently (two pools would be opened),
        # and `diagnose all` runs its checks concurrently.
        async with self._pg_lock:
            if self._pool is not None:
                return self._pool
            if self._pg_error is not None:  # every later caller hears what the first one did
                raise Unavailable("postgres", self._pg_error, *self._pg_detail)
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT * 2):
                    self._pool = await self.runtime.pool()
            except NoSchema as exc:
                self._pg_error = _one_line(exc)
                self._pg_detail = ("has no ms07 schema",
                                   "check MS07_DATABASE_URL / MS07_STATE_DIR point at the engine's database; "
                                   "if they do, apply the schema (ms07 run does it at start)",
                                   "ms07 db migrate")
                raise Unavailable("postgres", self._pg_error, *self._pg_detail) from None
            except (Ms07Error, psycopg.Error, OSError, TimeoutError) as exc:
                self._pg_error = _one_line(exc) if not isinstance(exc, TimeoutError) else (
                    f"no answer from PostgreSQL within {CONNECT_TIMEOUT * 2:g}s"
                )
                raise Unavailable("postgres", self._pg_error) from None
            return self._pool

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection with a statement timeout; trouble becomes :class:`Unavailable`."""
        pool = await self._get_pool()
        try:
            async with pool.connection(timeout=CONNECT_TIMEOUT) as conn:
                await conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
                yield conn
        except psycopg.errors.UndefinedTable as exc:
            raise Unavailable("postgres", f"the schema is not migrated: {_one_line(exc)}", "has no ms07 schema",
                              "apply the schema (ms07 run does it at start)", "ms07 db migrate") from None
        except psycopg.errors.QueryCanceled:
            raise Unavailable("postgres", f"query exceeded {STATEMENT_TIMEOUT_MS // 1000}s") from None
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise Unavailable("postgres", describe_pg_error(exc)) from None
        except Exception as exc:
            if type(exc).__name__ == "PoolTimeout":
                raise Unavailable("postgres", "no pooled connection within "
                                              f"{CONNECT_TIMEOUT:g}s") from None
            raise

    # ------------------------------------------------------------------ Redis

    async def queue(self) -> Queue:
        async with self._redis_lock:
            if self._queue is not None:
                return self._queue
            if self._redis_error is not None:
                raise Unavailable("redis", self._redis_error)
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT * 2):
                    self._queue = await self.runtime.queue()
            except (Ms07Error, RedisError, OSError, TimeoutError) as exc:
                self._redis_error = _one_line(exc) if not isinstance(exc, TimeoutError) else (
                    f"no answer from Redis within {CONNECT_TIMEOUT * 2:g}s"
                )
                raise Unavailable("redis", self._redis_error) from None
            return self._queue

    async def aclose(self) -> None:
        if self._owns_runtime:
            with contextlib.suppress(Exception):
                await self.runtime.aclose()


_REMEDIES = {
    "postgres": ("check that PostgreSQL answers at MS07_DATABASE_URL", "ms07 recover db-connection --dry-run"),
    "redis": ("check that Redis answers at MS07_REDIS_URL", "ms07 queue stats"),
}


async def part(result: CheckResult, name: str, fn: Callable[[], Awaitable[None]]) -> bool:
    """Run one part of a check. A dependency out of reach (or a bug) becomes an UNKNOWN
    finding naming the part, never a traceback. Returns whether the part completed."""
    try:
        await fn()
        return True
    except Unavailable as exc:
        remedy, command = _REMEDIES.get(exc.dependency, ("", ""))
        result.not_checked(exc.dependency, name, exc.reason, exc.remedy or remedy, exc.command or command,
                           problem=exc.problem)
    except RedisError as exc:
        remedy, command = _REMEDIES["redis"]
        result.not_checked("redis", name, clip(describe_redis_error(exc), 300), remedy, command)
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        remedy, command = _REMEDIES["postgres"]
        result.not_checked("postgres", name, describe_pg_error(exc), remedy, command)
    except Exception as exc:
        result.add(
            f"{name.replace(' ', '_')}_failed",
            "warning",
            f"{name} could not be checked: {type(exc).__name__}",
            _one_line(exc),
            "report this as a bug in ms07 diagnose, with the evidence",
            unknown=True,
        )
    return False
