"""Authentication to destinations: bearer, API key, basic, OAuth2 client credentials.

Secret values are read from the env var or mounted file the config names, when needed
(a rotated file is picked up within ``SECRET_TTL`` seconds, no restart), registered with
the log redactor, and never stored in settings, the database or Redis.

OAuth2 is the client-credentials grant: one form POST, through aiohttp and the SSRF
guard's connector like deliveries. Authlib's httpx integration was the first choice, but
Authlib 1.9 deprecates it (it warns at import and moves to httpx2), and the parts that
matter here -- a cache shared by many concurrent deliveries, one fetch for all of them
(single flight), refresh ahead of expiry, and one forced refresh after a 401 -- are ours
to write either way.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import aiohttp

from ms07 import logs
from ms07.config import AuthConfig, DestinationConfig, NetworkConfig, resolve_secret
from ms07.engine import ssrf
from ms07.errors import ConfigError
from ms07.resolved import ResolvedDestination

SECRET_TTL = 30.0
log = logs.get("auth")


class AuthError(ConfigError):
    """Credentials could not be obtained (missing secret, token endpoint refused)."""

    def __init__(self, message: str, code: str = "AUTH_CONFIG_ERROR", status: int | None = None,
                 permanent: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.permanent = permanent


class _Secret:
    """A secret reference, re-read at most every SECRET_TTL seconds."""

    def __init__(self, env: str | None, file: str | None, what: str) -> None:
        self.env, self.file, self.what = env, file, what
        self._value: str | None = None
        self._read_at = 0.0

    def get(self) -> str:
        now = time.monotonic()
        if self._value is None or now - self._read_at > SECRET_TTL:
            try:
                value = resolve_secret(self.env, self.file, self.what)
            except ConfigError as exc:
                raise AuthError(str(exc)) from None
            if not value:
                raise AuthError(f"{self.what}: no secret configured")
            logs.register_secret(value)
            self._value, self._read_at = value, now
        return self._value


class StaticAuth:
    """A header whose value comes from a secret: bearer, API key or basic."""

    refreshable = False
    generation = 0

    def __init__(self, kind: str, header: str, secret: _Secret, fmt: str = "{}") -> None:
        self.kind, self.header, self.secret, self.fmt = kind, header, secret, fmt

    async def headers(self) -> dict[str, str]:
        return {self.header: self.fmt.format(self.secret.get())}

    async def invalidate(self, generation: int | None = None) -> None:
        self.secret._value = None  # re-read: the secret may have been rotated

    def static_token(self) -> str | None:
        return self.secret.get() if self.kind == "bearer" else None


class BasicAuth(StaticAuth):
    def __init__(self, username: str, secret: _Secret) -> None:
        super().__init__("basic", "Authorization", secret)
        self.username = username

    async def headers(self) -> dict[str, str]:
        raw = f"{self.username}:{self.secret.get()}".encode()
        value = base64.b64encode(raw).decode()
        logs.register_secret(value)
        return {"Authorization": f"Basic {value}"}


class OAuth2ClientCredentials:
    """Client-credentials tokens, cached, refreshed ahead of expiry, fetched once for
    any number of concurrent callers."""

    refreshable = True
    kind = "oauth2_client_credentials"

    def __init__(self, name: str, cfg: AuthConfig, *, timeout: float = 10.0,
                 network: NetworkConfig | None = None) -> None:
        self.name = name
        self.cfg = cfg
        self.network = network
        self.secret = _Secret(cfg.client_secret_env, cfg.client_secret_file, f"destinations.{name}.auth.client_secret")
        self.timeout = timeout
        self.token: str | None = None
        self.expires_at = 0.0
        self.generation = 0
        self.fetches = 0
        self._lock = asyncio.Lock()

    def _valid(self) -> bool:
        return self.token is not None and time.time() < self.expires_at - self.cfg.refresh_margin_seconds

    def expires_in(self) -> float | None:
        return None if self.token is None else self.expires_at - time.time()

    async def headers(self) -> dict[str, str]:
        if not self._valid():
            await self._refresh(self.generation)
        return {"Authorization": f"Bearer {self.token}"}

    async def invalidate(self, generation: int | None = None) -> None:
        """Drop the token after a 401, unless someone already replaced it."""
        if generation is None or generation == self.generation:
            self.expires_at = 0.0

    async def _refresh(self, seen: int) -> None:
        async with self._lock:
            if self.generation != seen and self._valid():
                return  # another caller refreshed while we waited
            await self._fetch()

    async def _fetch(self) -> None:
        cfg = self.cfg
        data = {"grant_type": "client_credentials"}
        if cfg.scope:
            data["scope"] = cfg.scope
        if cfg.audience:
            data["audience"] = cfg.audience
        secret = self.secret.get()
        headers = {"Accept": "application/json"}
        # "client_secret_post" names a token auth method; it is no secret.
        if cfg.token_auth_method == "client_secret_post":  # nosec B105
            data.update({"client_id": cfg.client_id or "", "client_secret": secret})
        else:
            # Written by hand, not aiohttp.BasicAuth: that one refuses a client id with ':'.
            basic = base64.b64encode(f"{cfg.client_id or ''}:{secret}".encode()).decode()
            logs.register_secret(basic)  # the header carries the secret in this spelling too
            headers["Authorization"] = f"Basic {basic}"
        self.fetches += 1
        try:
            # The engine's guarded connector, as for deliveries: token_url may not reach inside either.
            async with aiohttp.ClientSession(connector=ssrf.connector(self.network),
                                             timeout=aiohttp.ClientTimeout(total=self.timeout)) as client:
                async with client.post(cfg.token_url or "", data=data, headers=headers,
                                       allow_redirects=False) as resp:
                    status, raw = resp.status, await resp.read()
        except (aiohttp.ClientError, OSError) as exc:  # TimeoutError is an OSError
            refused = ssrf.refusal(exc)
            if refused is not None:
                raise AuthError(f"token endpoint of {self.name}: {refused}", code="DESTINATION_FORBIDDEN",
                                permanent=True) from None
            raise AuthError(f"token endpoint of {self.name} unreachable: {type(exc).__name__}") from None
        text = raw.decode("utf-8", "replace")
        if status != 200:
            code = "AUTHENTICATION_FAILED" if status in (400, 401, 403) else "AUTH_CONFIG_ERROR"
            raise AuthError(f"token endpoint of {self.name} answered HTTP {status}: "
                            f"{logs.clip(text, 200)}", code=code, status=status)
        try:
            body = json.loads(text)
            token = body["access_token"]
            expires_in = float(body.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError):
            raise AuthError(f"token endpoint of {self.name} gave no access_token") from None
        logs.register_rotating_secret(f"oauth2:{self.name}", token)
        self.token = token
        self.expires_at = time.time() + expires_in
        self.generation += 1
        log.info("OAuth2 token refreshed", destination=self.name, expires_in=int(expires_in))


# What a destination's requests are authenticated with: headers(), invalidate(), generation.
AuthProvider = StaticAuth | OAuth2ClientCredentials


def provider_for(dest: DestinationConfig | ResolvedDestination,
                 network: NetworkConfig | None = None) -> AuthProvider | None:
    """The auth provider a destination's config asks for (None for ``none``). ``network``
    is the guard the OAuth2 token fetch goes through (the engine's ``network`` settings)."""
    a = dest.auth
    where = f"destinations.{dest.name}.auth"
    if a.type == "bearer":
        return StaticAuth("bearer", "Authorization", _Secret(a.token_env, a.token_file, f"{where}.token"), "Bearer {}")
    if a.type == "api_key":
        return StaticAuth("api_key", a.header or "X-API-Key", _Secret(a.value_env, a.value_file, f"{where}.value"))
    if a.type == "basic":
        return BasicAuth(a.username or "", _Secret(a.password_env, a.password_file, f"{where}.password"))
    if a.type == "oauth2_client_credentials":
        return OAuth2ClientCredentials(dest.name, a, network=network)
    return None
