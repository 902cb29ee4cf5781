"""Ask a running engine how it is: ``GET /health/ready`` or ``/health/detailed``.

The client side of ``ms07 health`` (and of anything else that wants the engine's own
verdict, e.g. ``ms07 diagnose health``). :func:`fetch_health` never raises for network
trouble or a bad answer: the result says what happened, so callers only map it.
"""

from __future__ import annotations

from typing import Any

from ms07 import logs

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"
UNREACHABLE, UNAUTHORIZED, INVALID = "unreachable", "unauthorized", "invalid"
# Exit codes of `ms07 health`; anything we could not judge is 3 (UNKNOWN, as in Nagios).
EXIT_CODES = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}
EXIT_UNKNOWN = 3
DEFAULT_TIMEOUT = 10.0  # the engine's own checks take up to 2 s each when a dependency hangs


def base_url(settings: Any, url: str | None = None) -> str:
    """``url``, else ``settings.health_url`` (MS07_HEALTH_URL), else the local port."""
    chosen = url or getattr(settings, "health_url", None) or f"http://127.0.0.1:{settings.service.http_port}"
    return chosen.rstrip("/")


def exit_code(result: dict[str, Any]) -> int:
    return EXIT_CODES.get(result.get("status", ""), EXIT_UNKNOWN)


async def fetch_health(
    url: str, token: str | None, detailed: bool = False, *,
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - the HTTP client's own timeout
) -> dict[str, Any]:
    """GET the engine's health report from base ``url`` with the bearer ``token``.

    Returns ``{"url", "endpoint", "http_status", "status", "report", "error"}``: ``status``
    is the report's own (healthy|degraded|unhealthy), or ``unreachable`` (no answer),
    ``unauthorized`` (401/403) or ``invalid`` (an answer that is not a health report);
    ``report`` is the engine's JSON body, ``error`` one line saying what went wrong.
    """
    import httpx

    logs.register_secret(token)
    endpoint = f"{url.rstrip('/')}/health/{'detailed' if detailed else 'ready'}"
    shown = logs.safe_url(endpoint) or endpoint
    result: dict[str, Any] = {"url": shown, "endpoint": "detailed" if detailed else "ready",
                              "http_status": None, "status": UNREACHABLE, "report": None, "error": None}
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
            resp = await client.get(endpoint, headers=headers)
    except httpx.TimeoutException:
        result["error"] = f"no answer within {timeout:g}s"
        return result
    except (httpx.HTTPError, ValueError, OSError) as exc:
        result["error"] = logs.clip(f"cannot connect: {str(exc) or type(exc).__name__}", 300)
        return result
    result["http_status"] = resp.status_code
    if resp.status_code in (401, 403):
        result["status"] = UNAUTHORIZED
        result["error"] = (f"the engine refused the token (HTTP {resp.status_code}); set MS07_API_TOKEN"
                           if token else f"the engine wants a token (HTTP {resp.status_code}); set MS07_API_TOKEN")
        return result
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or body.get("status") not in EXIT_CODES:
        result["status"] = INVALID
        result["error"] = (f"{shown} answered HTTP {resp.status_code} without a health report"
                           f" (is this the engine's address?)")
        return result
    result["status"] = body["status"]
    result["report"] = body
    return result
