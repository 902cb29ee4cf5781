"""JSON logs with the guide's fields, and redaction of every secret ms07 knows.

One JSON object a line on stdout: ``timestamp`` (ISO 8601 UTC), ``level``, ``service``,
``component``, ``distribution_id``, ``destination``, ``error_code``, ``correlation_id``,
``message``, ``stack_trace`` (on errors) and ``metadata`` (everything else). Secrets
resolved at run time are registered with :func:`register_secret` and replaced by
``***`` in every line, as are bearer tokens, Authorization headers, URL userinfo and
``password=`` pairs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
import traceback
from typing import Any

from ms07 import SERVICE_NAME

_TOP = ("component", "distribution_id", "destination", "error_code", "correlation_id")
_secrets: set[str] = set()
_PATTERNS = [
    # A token, not prose: "Bearer" as in a header, then 8 or more token characters.
    (re.compile(r"(\b[Bb]earer\s+)(?=[A-Za-z0-9._~+/=-]*[0-9._~+/=-])[A-Za-z0-9._~+/=-]{8,}"), r"\1***"),
    (re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)(basic|bearer)?\s*[^\s\"',}]+"), r"\1***"),
    (re.compile(r"(?i)(password|passwd|secret|token|api_key)=([^&\s\"']+)"), r"\1=***"),
    (re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^:/@\s]+:)([^@\s/]+)@"), r"\1***@"),
]


def register_secret(value: str | None) -> None:
    """Remember a secret value so that it never appears in a log line."""
    if value and len(value) >= 4:
        _secrets.add(value)


def redact(text: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = dict(getattr(record, "ms07", {}) or {})
        out: dict[str, Any] = {
            "timestamp": _iso(record.created),
            "level": "WARN" if record.levelname == "WARNING" else record.levelname,
            "service": SERVICE_NAME,
            "component": fields.pop("component", None) or record.name.rsplit(".", 1)[-1],
        }
        for key in _TOP[1:]:
            if key in fields:
                out[key] = fields.pop(key)
        out["message"] = record.getMessage()
        if record.exc_info:
            out["stack_trace"] = "".join(traceback.format_exception(*record.exc_info))
        if fields:
            out["metadata"] = fields
        return redact(json.dumps(out, default=str, ensure_ascii=False))


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = dict(getattr(record, "ms07", {}) or {})
        component = fields.pop("component", None) or record.name.rsplit(".", 1)[-1]
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        ts = dt.datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        line = f"{ts} {record.levelname:<7} {component:<12} {record.getMessage()}"
        if extra:
            line += f"  {extra}"
        if record.exc_info:
            line += "\n" + "".join(traceback.format_exception(*record.exc_info))
        return redact(line)


class Log:
    """A component's logger: ``log.info("delivered", distribution_id=..., attempt=2)``."""

    def __init__(self, component: str) -> None:
        self.component = component
        self._logger = logging.getLogger(f"ms07.{component}")

    def _log(self, level: int, msg: str, exc_info: Any = None, **fields: Any) -> None:
        if self._logger.isEnabledFor(level):
            fields.setdefault("component", self.component)
            self._logger.log(level, msg, exc_info=exc_info, extra={"ms07": fields})

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


def configure(level: str = "INFO", fmt: str = "json", stream: Any = None) -> None:
    """Send ms07's logs (and warnings of its libraries) to stdout in the chosen format."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_ms07", False):
            root.removeHandler(old)
    handler._ms07 = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("ms07").setLevel(level.upper())
    # httpx logs full URLs (userinfo included) at INFO: keep it and its transport quiet.
    for noisy in ("httpx", "httpcore", "aiohttp.access", "kubernetes", "urllib3", "pgserver"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
