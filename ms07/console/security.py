"""The console's guard: login with a token, a signed session cookie, CSRF, headers.

- **Login**: the API token (``MS07_API_TOKEN`` / ``service.api_token_file``) gives the
  ``operator`` role, the read-only token (``MS07_API_READ_TOKEN`` /
  ``service.read_only_token_file``) the ``viewer`` role. The token is posted once to
  ``/console/login`` and exchanged for a session cookie; it is never stored, echoed or
  rendered.
- **Session**: an HttpOnly, SameSite=Strict cookie (``Secure`` over HTTPS), path
  ``/console``, holding ``role.expiry.nonce`` and an HMAC of them. The key is derived from
  both tokens, so every replica sharing the tokens accepts the cookie (no server state),
  and rotating either token ends every session. Without any token
  (``service.allow_unauthenticated``) the key is random per process and a visitor gets an
  operator session at once: the console is as open as the API then, and still on loopback.
- **CSRF**: every POST carries ``csrf``, an HMAC of the session's nonce; a POST without it
  (or with another session's) is refused with 403, as is one whose ``Origin`` is not this
  host. The login form carries a token bound to a short-lived pre-login cookie.
- **Headers**: a strict Content-Security-Policy (only this origin's scripts and styles, no
  inline ones, no frames), ``nosniff``, no referrer to other sites (``same-origin``: with ``no-referrer`` a browser
  sends ``Origin: null`` and the Origin check would refuse its own forms), ``no-store`` on pages.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

OPERATOR, VIEWER = "operator", "viewer"
SESSION_COOKIE = "ms07_console"
LOGIN_COOKIE = "ms07_console_login"
PATH = "/console"
LOGIN_SECONDS = 600

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Session:
    role: str
    expires: int
    nonce: str

    @property
    def can_act(self) -> bool:
        return self.role == OPERATOR


class Guard:
    """Tokens in, sessions out. ``tokens`` returns the current (operator, viewer) tokens,
    so a rotated token file takes effect here as it does for the API."""

    def __init__(self, tokens: Callable[[], tuple[bytes | None, bytes | None]], session_hours: float) -> None:
        self._tokens = tokens
        self._random_key = secrets.token_bytes(32)
        self.session_seconds = int(session_hours * 3600)

    @property
    def open(self) -> bool:
        """No operator token: the console (like the API) answers without login."""
        return self._tokens()[0] is None

    def _key(self) -> bytes:
        operator, viewer = self._tokens()
        if operator is None:
            return self._random_key
        return hashlib.sha256(b"ms07-console-session\0" + operator + b"\0" + (viewer or b"")).digest()

    def _mac(self, text: str) -> str:
        return _b64(hmac.new(self._key(), text.encode(), hashlib.sha256).digest())

    # ------------------------------------------------------------------ login

    def role_for(self, given: str) -> str | None:
        """The role a token typed at the login form gives, or None. Both comparisons run
        (constant time), so timing does not tell which token came close."""
        operator, viewer = self._tokens()
        raw = given.strip().encode("utf-8", "surrogateescape")
        is_operator = operator is not None and hmac.compare_digest(raw, operator)
        is_viewer = viewer is not None and hmac.compare_digest(raw, viewer)
        return OPERATOR if is_operator else VIEWER if is_viewer else None

    def issue(self, role: str) -> tuple[str, Session]:
        session = Session(role, int(time.time()) + self.session_seconds, secrets.token_hex(16))
        body = _b64(json.dumps([session.role, session.expires, session.nonce]).encode())
        return f"{body}.{self._mac('s:' + body)}", session

    def read(self, cookie: str | None) -> Session | None:
        if not cookie or "." not in cookie or len(cookie) > 400:
            return None
        body, _, mac = cookie.partition(".")
        if not hmac.compare_digest(mac.encode(), self._mac("s:" + body).encode()):
            return None
        try:
            role, expires, nonce = json.loads(_unb64(body))
        except (ValueError, TypeError):
            return None
        if role not in (OPERATOR, VIEWER) or not isinstance(expires, int) or expires < time.time():
            return None
        return Session(role, expires, str(nonce))

    def csrf(self, session: Session) -> str:
        return self._mac("c:" + session.nonce)

    def csrf_ok(self, session: Session, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(str(given).encode(), self.csrf(session).encode())

    def login_csrf(self, nonce: str) -> str:
        return self._mac("l:" + nonce)

    # ------------------------------------------------------------------ cookies

    def set_session(self, request: web.Request, response: web.StreamResponse, cookie: str) -> None:
        response.set_cookie(SESSION_COOKIE, cookie, max_age=self.session_seconds, path=PATH, httponly=True,
                            samesite="Strict", secure=request.secure)

    @staticmethod
    def set_login(request: web.Request, response: web.StreamResponse, nonce: str) -> None:
        response.set_cookie(LOGIN_COOKIE, nonce, max_age=LOGIN_SECONDS, path=PATH, httponly=True,
                            samesite="Strict", secure=request.secure)

    @staticmethod
    def clear(response: web.StreamResponse) -> None:
        response.del_cookie(SESSION_COOKIE, path=PATH)
        response.del_cookie(LOGIN_COOKIE, path=PATH)


def same_origin(request: web.Request) -> bool:
    """A POST's ``Origin`` (sent by every current browser) must be this host; a client that
    sends none (curl, a test) still needs the CSRF token."""
    from urllib.parse import urlsplit

    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.host  # "null" (a sandboxed frame) never matches
