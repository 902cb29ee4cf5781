"""HTTP delivery to one destination: the hot path.

The engine posts with aiohttp directly. httpx's default transport collapses under
concurrency (encode/httpx#3215) and even on the ``httpx-aiohttp`` transport it reaches
about half of bare aiohttp here (see bench/throughput.py and the README), which is below
the engine's target, so the delivery path uses aiohttp's client (and so do the OAuth2
token fetch and the health probes, through the same SSRF-guarded connector:
``ms07.engine.ssrf.connector``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import io
import os
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiohttp

from ms07 import __version__
from ms07.config import DistributionConfig, NetworkConfig
from ms07.engine import ssrf
from ms07.engine.auth import AuthProvider
from ms07.engine.ratelimit import RateLimiter
from ms07.engine.signing import Signer
from ms07.errors import Ms07Error
from ms07.logs import clip
from ms07.resolved import ResolvedDestination


class ErrorCode(StrEnum):
    CONNECTION_TIMEOUT = "CONNECTION_TIMEOUT"
    CONNECTION_ERROR = "CONNECTION_ERROR"
    READ_TIMEOUT = "READ_TIMEOUT"
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
    HTTP_5XX = "HTTP_5XX"
    HTTP_4XX = "HTTP_4XX"
    HTTP_3XX = "HTTP_3XX"
    AUTHENTICATION_FAILED = "AUTHENTICATION_FAILED"
    RATE_LIMITED = "RATE_LIMITED"
    CIRCUIT_OPEN = "CIRCUIT_OPEN"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    INVALID_MESSAGE = "INVALID_MESSAGE"
    MESSAGE_NOT_FOUND = "MESSAGE_NOT_FOUND"
    POISON_MESSAGE = "POISON_MESSAGE"
    UNKNOWN_DESTINATION = "UNKNOWN_DESTINATION"
    DESTINATION_FORBIDDEN = "DESTINATION_FORBIDDEN"
    AUTH_CONFIG_ERROR = "AUTH_CONFIG_ERROR"
    RETRIES_EXHAUSTED = "RETRIES_EXHAUSTED"


_MAX_ERROR_BODY = 512
# How much of an error body is read: redaction sees this much, so that a secret the first
# _MAX_ERROR_BODY characters reach into is whole when it is looked for (see logs.clip).
_ERROR_WINDOW = 8 * _MAX_ERROR_BODY
USER_AGENT = f"ms07-distributor/{__version__}"


@dataclass(slots=True)
class AttemptResult:
    success: bool
    retryable: bool
    started_at: dt.datetime
    completed_at: dt.datetime
    latency: float
    http_status: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    retry_after: float | None = None
    auth_generation: int | None = None

    @property
    def auth_failure(self) -> bool:
        return self.http_status in (401, 403)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def classify(status: int, body: bytes, headers: Any, *, whole: bool = True
             ) -> tuple[bool, str | None, str | None, float | None]:
    """(retryable, error_code, message, retry_after) of a non-2xx response; ``whole``
    False says ``body`` is only the head of the response body."""
    # Scrubbed, then cut: a destination that echoes our request would otherwise put a
    # token, or the part of it before the cut, into Postgres, the DLQ and `ms07 status`.
    text = clip(body.decode("utf-8", "replace").strip(), _MAX_ERROR_BODY, partial=not whole)
    message = f"HTTP {status}" + (f": {text}" if text else "")
    if 300 <= status < 400:
        location = clip(headers.get("Location", ""), 200)
        return False, ErrorCode.HTTP_3XX, f"HTTP {status} redirect to {location} not followed", None
    if status in (401, 403):
        return True, ErrorCode.AUTHENTICATION_FAILED, message, None
    if status == 408:
        return True, ErrorCode.REQUEST_TIMEOUT, message, None
    if status == 429:
        return True, ErrorCode.RATE_LIMITED, message, parse_retry_after(headers.get("Retry-After"))
    if status == 413:
        return False, ErrorCode.PAYLOAD_TOO_LARGE, message, None
    if status >= 500:
        retry_after = parse_retry_after(headers.get("Retry-After")) if status == 503 else None
        return True, ErrorCode.HTTP_5XX, message, retry_after
    return False, ErrorCode.HTTP_4XX, message, None


def forget_tracebacks(exc: BaseException | None) -> None:
    """Drop the tracebacks of an error caught here and of its causes.

    A failed connection leaves reference cycles: an error's traceback holds the frames
    that hold the error (aiohappyeyeballs' list of errors, asyncio's futures), and
    aiohttp's frames hold the request, its headers and the payload. Only the cyclic GC
    frees a cycle, and ``ms07 run`` tunes it to run rarely (engine/daemon.py): with a
    destination down, every retry and half-open probe left ~80 objects (~6 KiB) and its
    payload behind until the next collection. Without the tracebacks (nothing logs them: the attempt keeps its
    message) nothing is left in a cycle and all of it is freed at once. The frames
    themselves are not cleared: one may be a coroutine still running elsewhere."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        e.__traceback__ = None
        stack += [e.__cause__, e.__context__, getattr(e, "os_error", None)]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class DestinationClient:
    """One pooled aiohttp session per destination, with its limits and timeouts."""

    def __init__(
        self,
        config: ResolvedDestination,
        dist: DistributionConfig,
        *,
        auth: AuthProvider | None = None,
        signer: Signer | None = None,
        network: NetworkConfig | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.url = config.url
        self.method = config.method.upper()
        self.timeout = config.timeout_seconds
        self.connect_timeout = config.connect_timeout_seconds
        self.stream_threshold = dist.stream_threshold_bytes
        self.auth = auth
        self.signer = signer
        self.limiter: RateLimiter | None = None  # set by the engine for rate-limited destinations
        self.network = network
        self._static = {"User-Agent": USER_AGENT, **config.headers}
        self.session: aiohttp.ClientSession | None = None
        # Deliveries running on this client: a client replaced at runtime (engine/live.py)
        # is closed only once they are done.
        self.users = 0
        self.idle: asyncio.Event | None = None  # set by the last of them once it is retired

    async def open(self) -> None:
        pool = self.config.pool
        connector = ssrf.connector(
            self.network,
            limit=pool.max_connections,
            limit_per_host=pool.max_connections,
            keepalive_timeout=pool.keepalive_expiry,
            ttl_dns_cache=60,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=self.connect_timeout),
            auto_decompress=False,
            raise_for_status=False,
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    def pool_usage(self) -> dict[str, int]:
        if self.session is None:
            return {"limit": self.config.pool.max_connections, "in_use": 0, "idle": 0}
        conn = self.session.connector
        in_use = sum(len(v) for v in getattr(conn, "_acquired_per_host", {}).values())
        idle = sum(len(v) for v in getattr(conn, "_conns", {}).values())
        return {"limit": self.config.pool.max_connections, "in_use": in_use, "idle": idle}

    def _headers(self, distribution_id: str, attempt: int, content_type: str) -> dict[str, str]:
        trace_id = distribution_id.replace("-", "")
        return {
            **self._static,
            "Content-Type": content_type,
            "Idempotency-Key": distribution_id,
            "X-Distribution-Id": distribution_id,
            "X-Distribution-Attempt": str(attempt),
            "traceparent": f"00-{trace_id}-{os.urandom(8).hex()}-01",
        }

    async def send(
        self,
        distribution_id: str,
        attempt: int,
        payload: bytes,
        content_type: str = "application/json",
        *,
        message_id: str | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> AttemptResult:
        """One HTTP attempt. Never raises for network trouble: the result says what happened."""
        if self.session is None:  # not an assert: python -O would drop it
            raise RuntimeError("DestinationClient.open() was not awaited")
        headers = self._headers(distribution_id, attempt, content_type)
        if extra_headers:
            headers.update(extra_headers)
        started = _now()
        t0 = time.perf_counter()
        generation = None
        try:
            if self.auth is not None:
                headers.update(await self.auth.headers())
                generation = self.auth.generation
            if self.signer is not None:
                headers.update(self.signer.sign(message_id or distribution_id, payload))
            # Large bodies are streamed in chunks from a BytesIO over the same buffer (no
            # copy), so one big payload does not hold the event loop while it is written.
            data: Any = io.BytesIO(payload) if len(payload) > self.stream_threshold else payload
            async with self.session.request(
                self.method, self.url, data=data, headers=headers, allow_redirects=False
            ) as resp:
                status = resp.status
                if 200 <= status < 300:
                    await resp.read()
                    return AttemptResult(True, False, started, _now(), time.perf_counter() - t0, status,
                                         auth_generation=generation)
                body = await _read_head(resp.content, _ERROR_WINDOW)
                retryable, code, message, retry_after = classify(status, body, resp.headers,
                                                                 whole=len(body) < _ERROR_WINDOW)
                return AttemptResult(
                    False, retryable, started, _now(), time.perf_counter() - t0, status, code, message,
                    retry_after, generation,
                )
        except Ms07Error as exc:  # credentials unavailable: missing secret, token endpoint refused
            result = self._failed(started, t0, getattr(exc, "code", ErrorCode.AUTH_CONFIG_ERROR), str(exc),
                                  retryable=not getattr(exc, "permanent", False))
            result.http_status = getattr(exc, "status", None)
            return result
        except (aiohttp.ConnectionTimeoutError, aiohttp.ServerTimeoutError) as exc:
            forget_tracebacks(exc)
            code = (
                ErrorCode.CONNECTION_TIMEOUT
                if isinstance(exc, aiohttp.ConnectionTimeoutError)
                else ErrorCode.READ_TIMEOUT
            )
            return self._failed(started, t0, code, f"{code.lower().replace('_', ' ')} after {self.timeout:g}s")
        except TimeoutError as exc:
            forget_tracebacks(exc)
            return self._failed(started, t0, ErrorCode.READ_TIMEOUT, f"no response within {self.timeout:g}s")
        except aiohttp.ClientConnectorError as exc:
            forget_tracebacks(exc)
            refused = ssrf.refusal(exc)
            if refused is not None:
                return self._failed(started, t0, ErrorCode.DESTINATION_FORBIDDEN, str(refused), retryable=False)
            return self._failed(started, t0, ErrorCode.CONNECTION_ERROR, f"cannot connect: {exc.os_error or exc}")
        except (aiohttp.ClientError, OSError) as exc:
            forget_tracebacks(exc)
            reason = str(exc) or type(exc).__name__
            if getattr(exc, "permanent", False):
                return self._failed(started, t0, getattr(exc, "code", ErrorCode.CONNECTION_ERROR), reason,
                                    retryable=False)
            return self._failed(started, t0, ErrorCode.CONNECTION_ERROR, reason)

    def _failed(
        self, started: dt.datetime, t0: float, code: str, message: str, *, retryable: bool = True
    ) -> AttemptResult:
        return AttemptResult(False, retryable, started, _now(), time.perf_counter() - t0, None, code,
                             clip(message, 500))


async def _read_head(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """Up to ``limit`` bytes of a body: ``read(n)`` returns what is buffered, which can be
    any prefix of it, and the head must not end early where the body does not."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


async def gather_close(clients: list[DestinationClient]) -> None:
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
