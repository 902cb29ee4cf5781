"""``diagnose auth`` (guide, problem 3): destinations refusing our credentials.

401/403 attempts in the window grouped by destination, status and message; each
destination's auth configuration with secrets redacted (only the names of the env vars
and files, and whether they resolve); the ``exp`` claim of static bearer tokens that
are JWTs, read without verification; the expiry of OAuth2 tokens the engine cached; and
with ``--probe`` one authenticated GET per destination.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Any

from ms07 import keys, logs
from ms07.config import DestinationConfig, resolve_secret
from ms07.diagnose.common import rows
from ms07.diagnose.context import Context, part
from ms07.diagnose.model import CheckResult, fmt_duration
from ms07.errors import ConfigError
from ms07.store import diagnose_sql as sql

_SECRET_REFS = {
    "bearer": ("token_env", "token_file", "token"),
    "api_key": ("value_env", "value_file", "value"),
    "basic": ("password_env", "password_file", "password"),
    "oauth2_client_credentials": ("client_secret_env", "client_secret_file", "client_secret"),
}


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT, decoded but NOT verified (we only read ``exp``); None if the
    token is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    return claims if isinstance(claims, dict) else None


def jwt_expiry(token: str) -> float | None:
    claims = jwt_claims(token)
    exp = claims.get("exp") if claims else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def _reference(dest: DestinationConfig) -> str:
    a = dest.auth.redacted()
    return ", ".join(f"{k}={v}" for k, v in a.items() if k not in ("type", "token_auth_method",
                                                                    "refresh_margin_seconds")) or "-"


def _secret(dest: DestinationConfig) -> tuple[str | None, str | None]:
    """(value, problem) of the destination's secret. The value never leaves this module
    except as an expiry."""
    refs = _SECRET_REFS.get(dest.auth.type)
    if refs is None:
        return None, None
    env, file, what = getattr(dest.auth, refs[0]), getattr(dest.auth, refs[1]), refs[2]
    try:
        value = resolve_secret(env, file, f"destinations.{dest.name}.auth.{what}")
    except ConfigError as exc:
        return None, str(exc)
    if not value:
        return None, f"destinations.{dest.name}.auth.{what}: no secret configured"
    logs.register_secret(value)  # whatever we print next is redacted against it
    return value, None


def _expiry_text(expires_at: float, now: float) -> str:
    left = expires_at - now
    return f"expired {fmt_duration(-left)} ago" if left <= 0 else f"expires in {fmt_duration(left)}"


async def check(ctx: Context) -> CheckResult:
    """Run the auth check; see the module docstring."""
    r = CheckResult("auth")
    o = ctx.options
    now = time.time()
    for d in ctx.settings.destinations:
        _secret(d)  # registered with the redactor before any error message is quoted

    async def failures() -> None:
        async with ctx.connection() as conn:
            found = await rows(conn, sql.AUTH_FAILURES, {"since": o.since_seconds})
            names = sorted({f["destination_name"] for f in found})
            last = {x["name"]: x for x in await rows(conn, sql.LAST_ATTEMPT, {"names": names})} if names else {}
        r.details["failures"] = found
        if not found:
            r.add("failures", "info", f"no 401/403 answer in the last {o.since_text}")
            return
        table = r.section(f"401/403 attempts, last {o.since_text}",
                          ["destination", "status", "message", "occurrences", "last"])
        for f in found:
            table.rows.append([f["destination_name"], str(f["response_status_code"]), f["error_message"][:100],
                               str(f["occurrences"]), str(f["last_at"])[:19]])
        for name in names:
            mine = [f for f in found if f["destination_name"] == name]
            count = sum(f["occurrences"] for f in mine)
            codes = "/".join(sorted({str(f["response_status_code"]) for f in mine}))
            latest = last.get(name) or {}
            still = latest.get("response_status_code") in (401, 403)
            ref = _reference(ctx.settings.destination(name)) if name in ctx.settings.destination_names else "-"
            r.add("failures", "critical" if still else "warning",
                  f"{name}: {count} attempt(s) refused with {codes} in the last {o.since_text}"
                  + (" and the latest attempt too" if still else "; the latest attempt passed"),
                  "; ".join(f"{f['response_status_code']} x{f['occurrences']}: {f['error_message'][:80]}" for f in mine)
                  + f"; credential reference: {ref}",
                  "the credential is wrong, expired or lacks permission (403): rotate the secret the "
                  "reference names (the engine re-reads it within 30 s), verify, then replay the DLQ "
                  "with `ms07 dlq replay --all`",
                  "ms07 diagnose auth --probe", subject=name)

    await part(r, "401/403 attempts", failures)

    cached: dict[str, dict[str, str]] = {}
    oauth = [d for d in ctx.settings.destinations if d.auth.type == "oauth2_client_credentials"]

    async def token_cache() -> None:
        queue = await ctx.queue()
        pipe = queue.redis.pipeline(transaction=False)
        for d in oauth:
            pipe.hgetall(keys.token_info(d.name))
        cached.update({d.name: h for d, h in zip(oauth, await pipe.execute(), strict=True) if h})

    if oauth:
        await part(r, "OAuth2 token cache", token_cache)
    _config(ctx, r, now, cached)
    if o.probe:
        await _probe(ctx, r)
    return r


def _config(ctx: Context, r: CheckResult, now: float, cached: dict[str, dict[str, str]]) -> None:
    warn_s = ctx.options.token_expiry_warning_seconds
    table = r.section("auth configuration (secrets redacted)", ["destination", "type", "reference", "secret", "token"])
    for d in ctx.settings.destinations:
        value, problem = _secret(d)
        # Display text for the table, not secrets (bandit B105 reads 'token = "..."' as one).
        token = "-"  # nosec B105
        if problem:
            r.add("secret_missing", "critical", f"{d.name}: the secret of its auth ({d.auth.type}) cannot be read",
                  problem,
                  "set the environment variable or mount the file the reference names",
                  "ms07 diagnose auth --probe", subject=d.name)
        if d.auth.type == "bearer" and value:
            exp = jwt_expiry(value)
            if exp is None:
                token = "opaque (no exp claim)" if jwt_claims(value) is None else "JWT without exp"
            else:
                token = f"JWT {_expiry_text(exp, now)}"
                if exp <= now:
                    r.add("token_expired", "critical",
                          f"{d.name}: its static token (a JWT) expired {fmt_duration(now - exp)} ago",
                          f"JWT exp {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(exp))} (read without "
                          f"verification); reference {_reference(d)}",
                          "issue a new token and update the secret the reference names",
                          "ms07 diagnose auth --probe", subject=d.name)
                elif exp - now <= warn_s:
                    r.add("token_expiring", "warning",
                          f"{d.name}: its static token (a JWT) expires in {fmt_duration(exp - now)}",
                          f"JWT exp {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(exp))}; warning window "
                          f"{fmt_duration(warn_s)}; reference {_reference(d)}",
                          "rotate it before it expires", "ms07 diagnose auth --probe", subject=d.name)
        elif d.auth.type == "oauth2_client_credentials":
            info = cached.get(d.name)
            try:
                token = f"cached, {_expiry_text(float(info['expires_at']), now)}" if info else "none cached"
            except (KeyError, ValueError):
                token = "cache entry without expires_at"  # nosec B105
        table.rows.append([d.name, d.auth.type, _reference(d),
                           "-" if d.auth.type == "none" else ("missing" if problem else "set"), token])
    if not any(f.id in ("auth.secret_missing", "auth.token_expired", "auth.token_expiring") for f in r.findings):
        kinds = sorted({d.auth.type for d in ctx.settings.destinations})
        r.add("config", "info", f"{len(ctx.settings.destinations)} destination(s) checked; every secret resolves",
              f"auth types: {', '.join(kinds) or 'none'}")


async def _probe(ctx: Context, r: CheckResult) -> None:
    """One authenticated GET per destination (its health URL, else its URL)."""
    import asyncio

    from ms07.engine.auth import provider_for
    from ms07.probe import probe_http

    timeout = max(ctx.options.probe_timeout_seconds, 1.0)

    async def one(d: DestinationConfig) -> list[str]:
        url = d.health_url or d.url
        provider = provider_for(d)
        if provider is not None:
            try:
                await provider.headers()
            except Exception as exc:  # AuthError: missing secret, token endpoint refused
                r.add("probe_credentials", "critical", f"{d.name}: no credentials could be obtained",
                      logs.clip(str(exc), 300), "fix the secret or the token endpoint settings (token_url, client_id)",
                      "ms07 diagnose auth --probe", subject=d.name)
                return [d.name, url, "-", "credentials unavailable"]
        res = await probe_http(url, timeout=timeout, auth=provider)
        code = res.status_code
        if code in (401, 403):
            r.add("probe_rejected", "critical", f"{d.name}: GET {url} with our credentials -> {code}",
                  f"{res.latency_ms:.0f} ms; auth {d.auth.type}, reference {_reference(d)}",
                  "the destination refuses the credential: rotate it", "ms07 diagnose auth --probe", subject=d.name)
            verdict = "refused"
        elif code is None:
            r.add("probe_failed", "warning", f"{d.name}: the authenticated probe could not reach {url}",
                  res.error or "", "see whether the destination is reachable", "ms07 diagnose timeouts",
                  subject=d.name)
            verdict = res.error or "failed"
        else:
            verdict = "accepted" if 200 <= code < 300 else f"not refused (HTTP {code})"
        return [d.name, url, str(code or "-"), verdict]

    results = await asyncio.gather(*(one(d) for d in ctx.settings.destinations if d.enabled))
    table = r.section("authenticated probe", ["destination", "url", "status", "verdict"])
    table.rows.extend(results)
    if results and not any(f.id.startswith("auth.probe_") for f in r.findings):
        r.add("probe", "info", f"{len(results)} destination(s) accepted or did not refuse the authenticated probe")
