"""JSON logs with the guide's fields (docs/architecture.md), and redaction of every secret ms07 knows.

One JSON object a line on stdout, always with the same keys so that log pipelines can
rely on them: ``timestamp`` (ISO 8601 UTC), ``level`` (DEBUG, INFO, WARN, ERROR),
``service``, ``component``, ``distribution_id``, ``destination``, ``error_code``,
``correlation_id`` (null where they don't apply), ``message``, ``stack_trace`` (only when
an exception is logged) and ``metadata`` (every other field, e.g. ``attempt``,
``total_attempts``, ``last_error``, ``destination_url``).

Redaction runs on every string of a record (message, fields, stack trace) *before* it is
serialised, so a secret can neither leak nor break the JSON: values registered with
:func:`register_secret` (every secret ms07 resolves registers itself), in every form a
destination may echo them in (URL-encoded, JSON-escaped, base64, hex: :func:`encoded_forms`),
bearer/basic
credentials, ``Authorization`` headers, URL userinfo, ``password=``/``token=``-style
pairs and JSON ``"access_token": "..."`` members; fields whose *name* is a credential
(``authorization``, ``password``, ``token``, ...) are replaced whole. Text that is cut
(error messages, log fields) goes through :func:`clip`: redacted whole, then cut.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import datetime as dt
import decimal
import html
import json
import logging
import re
import sys
import traceback
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urlsplit

from ms07 import SERVICE_NAME

TOP_FIELDS = ("distribution_id", "destination", "error_code", "correlation_id")
REDACTED = "***"
_secrets: set[str] = set()  # every form of every secret, as it may appear in text
_registered: set[str] = set()  # the secrets themselves (registering again is then free)
_ordered: tuple[str, ...] = ()  # _secrets, longest first (a form may contain a shorter one)
# Finds whether any form occurs, in ~1 us where a test of each form took ~0.4 us each.
_finder: re.Pattern[str] | None = None
_longest = 0  # the longest form: what a cut text's tail may hold of a secret
# Encoded forms shorter than this are not looked for (they would match ordinary text).
_MIN_FORM = 8
# Secrets replaced over time (OAuth2 access tokens): the latest few of each owner.
_rotating: dict[str, list[str]] = {}
ROTATING_KEPT = 3
_SENSITIVE_WORDS = r"password|passwd|pwd|secret|client_secret|token|access_token|refresh_token|id_token|api_key|apikey"
_PATTERNS = [
    # "Authorization: Bearer x", 'Authorization': 'Basic x', authorization=x (headers in reprs)
    (re.compile(r"(?i)((?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)(?:(?:basic|bearer|token|digest)\s+)?[^\s\"',}\]]+"),
     r"\1***"),
    # A credential after its scheme, not prose: 8 or more token characters, one of them
    # not a letter ("bearer tokens" and "Basic authentication" are left alone).
    (re.compile(r"(?i)\b(bearer|basic)(\s+)(?=[A-Za-z0-9._~+/=-]*[0-9._~+/=-])[A-Za-z0-9._~+/=-]{8,}"), r"\1\2***"),
    # password=x, client_secret='x', access_token=x (query strings, libpq conninfo)
    (re.compile(rf"(?i)\b((?:[a-z0-9]+_)?(?:{_SENSITIVE_WORDS}))(\s*=\s*)(['\"])[^'\"]*\3"), r"\1\2\3***\3"),
    (re.compile(rf"(?i)\b((?:[a-z0-9]+_)?(?:{_SENSITIVE_WORDS}))(\s*=\s*)(?!\*\*\*)[^&\s\"';,]+"), r"\1\2***"),
    # "access_token": "x" (JSON bodies of token endpoints)
    (re.compile(rf"(?i)(\"(?:[a-z0-9]+_)?(?:{_SENSITIVE_WORDS})\"\s*:\s*\")[^\"]*"), r"\1***"),
    # scheme://user:password@host and scheme://token@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s\"']+@"), r"\1***@"),
]
_WORDS = ("password", "passwd", "pwd", "secret", "token", "api_key", "apikey")
# Words without which each of _PATTERNS cannot match (lower case).
_HINTS = (("authorization",), ("bearer", "basic"), _WORDS, _WORDS, _WORDS, ("@",))
_SENSITIVE_KEY = re.compile(
    rf"(?i)^(?:(?:proxy-)?authorization|cookie|set-cookie|x-api-key|api-key|"
    rf"(?:[a-z0-9]+_)?(?:{_SENSITIVE_WORDS}))$"
)
_context: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar("ms07_log_context", default=None)


def register_secret(value: str | None) -> None:
    """Remember a secret value so that it never appears in a log line or a stored error,
    in any of the forms a destination may echo it in (:func:`encoded_forms`)."""
    if not value or len(value) < 4 or value in _registered:
        return
    _registered.add(value)
    _secrets.update(encoded_forms(value))
    _rebuild()


def _rebuild() -> None:
    global _longest, _ordered, _finder
    _ordered = tuple(sorted(_secrets, key=len, reverse=True))
    _finder = re.compile("|".join(map(re.escape, _ordered))) if _ordered else None
    _longest = len(_ordered[0]) if _ordered else 0


def encoded_forms(secret: str) -> set[str]:
    """``secret`` as text may carry it: as is; URL-encoded (``quote`` with and without
    ``/`` safe, ``quote_plus``, lower-case escapes, twice encoded); JSON-escaped (ASCII or
    not, ``\\/`` too); HTML-escaped; hex; base64 and base64url, alone or inside a longer
    base64 text such as ``Basic base64(user:password)`` (the characters only the
    secret's bytes determine, at each of the three alignments)."""
    forms = {secret}
    for q in (quote(secret, safe=""), quote(secret), quote_plus(secret), quote_plus(secret, safe="/")):
        forms |= {q, re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), q), quote(q, safe="")}
    for j in (json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]):
        forms |= {j, j.replace("/", "\\/")}
    forms.add(html.escape(secret))
    raw = secret.encode("utf-8", "surrogatepass")
    forms |= {raw.hex(), raw.hex().upper()}
    for b64 in (base64.b64encode(raw).decode(), *_base64_cores(raw)):
        forms |= {b64, b64.translate(_URLSAFE), b64.rstrip("="), b64.translate(_URLSAFE).rstrip("=")}
    return {f for f in forms if f == secret or len(f) >= _MIN_FORM}


_URLSAFE = str.maketrans("+/", "-_")
# The bytes of a 3-byte group each base64 character depends on (by its place in the group).
_B64_DEPENDS = ((0,), (0, 1), (1, 2), (2,))


def _base64_cores(raw: bytes) -> list[str]:
    """For each alignment ``k`` of ``raw`` inside a longer byte string, the longest run of
    base64 characters that depend only on ``raw``'s bytes (its neighbours unknown)."""
    cores = []
    for k in range(3):
        enc = base64.b64encode(b"\0" * k + raw).decode()
        kept = [c for p, c in enumerate(enc)
                if all(k <= 3 * (p // 4) + b < k + len(raw) for b in _B64_DEPENDS[p % 4])]
        cores.append("".join(kept))  # contiguous: the determined places form one run
    return cores


def register_rotating_secret(owner: str, value: str | None) -> None:
    """Like :func:`register_secret`, for a value that replaces the previous one of
    ``owner`` (an OAuth2 access token at each refresh): only the latest ``ROTATING_KEPT``
    stay registered. Every token ever fetched stayed in the set before: it grew with each
    refresh for the life of the process, and every log line scanned all of it."""
    if not value or len(value) < 4 or value in _registered:
        return  # registered already (for good, or by another owner): left as it is
    kept = _rotating.setdefault(owner, [])
    kept.append(value)
    _registered.add(value)
    _secrets.update(encoded_forms(value))
    while len(kept) > ROTATING_KEPT:
        old = kept.pop(0)
        _registered.discard(old)
        # Forms another registered secret also has stay (a shared form is rare, but kept).
        others = set().union(*(encoded_forms(v) for v in _registered)) if _registered else set()
        _secrets.difference_update(encoded_forms(old) - others)
    _rebuild()


def register_url_secrets(url: str | None) -> None:
    """Register the password of a URL (userinfo or ``password=`` in the query)."""
    if not url:
        return
    try:
        parts = urlsplit(url)
        register_secret(parts.password)
        for key, value in parse_qsl(parts.query):
            if key.lower() in ("password", "passwd"):
                register_secret(value)
    except ValueError:
        return
    for m in re.finditer(r"(?i)\bpassword\s*=\s*'?([^'\s]+)", url):  # libpq keyword form
        register_secret(m.group(1))


def register_settings(settings: Any) -> None:
    """Register the secrets a Settings object knows of: API token, database and Redis
    passwords. Secrets of destinations register themselves when they are resolved."""
    # An unreadable token file is reported by whoever needs the token, not here.
    for read in ("api_token", "read_token"):
        try:
            register_secret(getattr(settings, read)())
        except Exception:  # nosec B110
            pass
    register_url_secrets(getattr(settings, "database_url", None))
    register_url_secrets(getattr(settings, "redis_url", None))


_console_base = ""


def set_console_url(url: str | None) -> None:
    """The console's public base URL (``service.console_url``), put before the console
    path of :func:`console_link`; None: the path alone. Set by the engine at start."""
    global _console_base
    _console_base = (url or "").rstrip("/")


def console_link(*segments: str) -> str:
    """The console page of a thing, for the ``console`` field of the few log lines an
    operator acts on: ``console_link("distributions", id)`` ->
    ``https://ms07.example.com/console/distributions/<id>`` (``/console/...`` alone without
    ``service.console_url``). Built only on those rare lines, never on the hot path."""
    return f"{_console_base}/console/" + "/".join(quote(s, safe="") for s in segments)


def redact(text: str) -> str:
    if _finder is not None and _finder.search(text):
        # Longest first, each everywhere: a leftmost regex replacement could take a short
        # form and leave the rest of a longer one that overlaps it.
        for secret in _ordered:
            if secret in text:
                text = text.replace(secret, REDACTED)
    # A pattern runs only where one of its words occurs (checked on the lower-cased text:
    # ~1 us instead of ~10-30 us a pattern on an error body). Non-ASCII text runs them
    # all: (?i) matching folds some characters that lower() turns into two.
    low = text.lower() if text.isascii() else None
    for (pattern, repl), hints in zip(_PATTERNS, _HINTS, strict=True):
        if low is None or any(h in low for h in hints):
            text = pattern.sub(repl, text)
    return text


def clip(text: str, limit: int, *, partial: bool = False) -> str:
    """``text`` redacted, *then* cut to ``limit`` characters: cut first, a secret across
    the cut would lose the characters that make it recognisable and keep the rest.
    ``partial`` says ``text`` is itself only the head of something longer (a response
    body read up to a window): its last characters may then begin a secret cut off by the
    window, and as many as the longest form of a secret are dropped before redacting.
    Every error text stored or logged goes through here."""
    if partial and _longest:
        text = text[: max(0, len(text) - _longest)]
    text = redact(text)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def safe_url(url: str | None) -> str | None:
    """A URL fit for a log line: no userinfo, credential-like query values masked."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        query = urlencode([(k, REDACTED if _SENSITIVE_KEY.match(k) else v) for k, v in pairs], safe="*")
        return redact(parts._replace(netloc=netloc, query=query).geturl())
    except ValueError:
        return "<invalid url>"


def scrub(value: Any, key: str | None = None) -> Any:
    """``value`` with every secret redacted, as JSON-ready data."""
    if key is not None and _SENSITIVE_KEY.match(key) and value is not None:
        return REDACTED
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {str(k): scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [scrub(v) for v in value]
    if isinstance(value, dt.datetime):
        return iso_utc(value)
    if isinstance(value, decimal.Decimal):
        return float(value)
    return redact(str(value))


def iso_utc(value: dt.datetime) -> str:
    """``2024-01-15T10:00:00.123Z``: ISO 8601, UTC, milliseconds."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@contextlib.contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add fields (e.g. ``correlation_id``) to every line logged inside the block,
    in this task and the tasks it starts."""
    token = _context.set({**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def _fields(record: logging.LogRecord) -> tuple[str, dict[str, Any]]:
    fields: dict[str, Any] = {**(_context.get() or {}), **(getattr(record, "ms07", None) or {})}
    component = fields.pop("component", None)
    if component is None:
        component = record.name.rsplit(".", 1)[-1]
        if not record.name.startswith("ms07"):
            fields.setdefault("logger", record.name)
    return str(component), fields


def _stack(record: logging.LogRecord) -> str | None:
    if record.exc_info and record.exc_info[0] is not None:
        return "".join(traceback.format_exception(*record.exc_info))
    if record.exc_text:
        return record.exc_text
    return None


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the guide's fields (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        component, fields = _fields(record)
        out: dict[str, Any] = {
            "timestamp": iso_utc(dt.datetime.fromtimestamp(record.created, dt.UTC)),
            "level": "WARN" if record.levelname == "WARNING" else record.levelname,
            "service": SERVICE_NAME,
            "component": component,
        }
        for key in TOP_FIELDS:
            out[key] = scrub(fields.pop(key, None))
        out["message"] = redact(record.getMessage())
        stack = _stack(record)
        if stack is not None:
            out["stack_trace"] = redact(stack)
        out["metadata"] = scrub(fields)
        return json.dumps(out, ensure_ascii=False, default=str)


class ConsoleFormatter(logging.Formatter):
    """``10:00:00 WARNING DistributionWorker message  key=value ...`` for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        component, fields = _fields(record)
        extra = " ".join(f"{k}={v}" for k, v in scrub(fields).items() if v is not None)
        ts = dt.datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        line = f"{ts} {record.levelname:<7} {component:<12} {redact(record.getMessage())}"
        if extra:
            line += f"  {extra}"
        stack = _stack(record)
        if stack is not None:
            line += "\n" + redact(stack)
        return line


class Log:
    """A component's logger: ``log.info("delivered", distribution_id=..., attempt=2)``."""

    def __init__(self, component: str) -> None:
        self.component = component
        self._logger = logging.getLogger(f"ms07.{component}")

    def _log(self, level: int, msg: str, exc_info: Any = None, **fields: Any) -> None:
        if self._logger.isEnabledFor(level):
            fields.setdefault("component", self.component)
            self._logger.log(level, msg, exc_info=exc_info, extra={"ms07": fields}, stacklevel=3)

    def debug(self, msg: str, **fields: Any) -> None:
        self._log(logging.DEBUG, msg, **fields)

    def info(self, msg: str, **fields: Any) -> None:
        self._log(logging.INFO, msg, **fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self._log(logging.WARNING, msg, **fields)

    def error(self, msg: str, **fields: Any) -> None:
        self._log(logging.ERROR, msg, **fields)

    def exception(self, msg: str, **fields: Any) -> None:
        self._log(logging.ERROR, msg, exc_info=True, **fields)

    def enabled(self, level: int) -> bool:
        return self._logger.isEnabledFor(level)


def get(component: str) -> Log:
    return Log(component)


# Libraries that log URLs or headers at INFO/DEBUG (httpx logs userinfo, encode/httpx#2760).
_QUIET = ("httpx", "httpcore", "aiohttp.access", "kubernetes", "urllib3", "pgserver", "asyncio")


def configure(level: str = "INFO", fmt: str = "json", stream: Any = None) -> logging.Handler:
    """Send ms07's logs (and warnings of its libraries) to stdout in the chosen format.

    Calling it again replaces the previous ms07 handler; returns the handler installed."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    unconfigure()
    handler._ms07 = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("ms07").setLevel(level.upper())
    for noisy in _QUIET:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler


def unconfigure() -> None:
    """Remove the handler :func:`configure` installed (tests, embedding)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_ms07", False):
            root.removeHandler(old)
            old.close()
