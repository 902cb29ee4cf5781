"""Searching the history: the filter ``ms07 jobs list``, ``ms07 replay``,
``GET /api/v1/distributions`` and ``POST /api/v1/replays`` share, and its cursor.

One parser for every door, so a time, a status or a cursor means the same thing from the
CLI and the API and is refused with the same one line (a :class:`UsageError`) before
anything is read or written.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from ms07.errors import UsageError
from ms07.store.status import JobStatus

STATUSES = tuple(s.value for s in JobStatus)
TIME_FIELDS = ("created", "finished")
FILTER_FIELDS = ("destination", "status", "since", "until", "on", "correlation_id", "idempotency_key", "error_code")
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
_TEXT_LIMIT = 500  # longer than any id, key or name ms07 stores; refuses junk early

_RELATIVE = re.compile(r"^(\d{1,6})([smhdw])$")
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def local_zone() -> dt.tzinfo:
    zone = dt.datetime.now().astimezone().tzinfo
    assert zone is not None  # nosec B101 - narrows a type; the value is never None here
    return zone


def parse_time(text: str, name: str, now: dt.datetime | None = None) -> tuple[dt.datetime, str | None]:
    """``text`` as an aware datetime, and a note when it was read in the local zone.

    ISO 8601 with an offset (``2026-12-03T14:00:00+01:00``, ``...Z``); a relative age
    (``30m``, ``2h``, ``1d``: that long ago); or ``HH:MM``: today, in the local zone."""
    text = text.strip()
    now = now or dt.datetime.now().astimezone()
    rel = _RELATIVE.match(text)
    if rel:
        return now - dt.timedelta(**{_UNITS[rel.group(2)]: int(rel.group(1))}), None
    clock = _CLOCK.match(text)
    if clock:
        hour, minute = int(clock.group(1)), int(clock.group(2))
        if hour > 23 or minute > 59:
            raise UsageError(f"{name} {text!r} is not a time of day (HH:MM, 00:00 to 23:59)")
        local = now.astimezone(local_zone())
        when = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
        return when, f"{name} {text} read as {when.isoformat()} (local zone {when.tzname()})"
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"{name} {text!r} is not a time: give ISO 8601 with an offset (2026-12-03T14:00:00+01:00), "
            "an age (30m, 2h, 1d) or a time of day today (14:00)"
        ) from None
    if when.tzinfo is None:
        raise UsageError(f"{name} {text!r} has no UTC offset: add one (Z, +01:00) or give HH:MM for today, local zone")
    return when, None


@dataclass(frozen=True, slots=True)
class JobFilter:
    destination: str | None = None
    statuses: tuple[str, ...] = ()
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    on: str = "created"  # which time since/until bound: created or finished
    correlation_id: str | None = None
    idempotency_key: str | None = None
    error_code: str | None = None
    notes: tuple[str, ...] = field(default=(), compare=False)
    # since/until as given: a relative time (2h) names the same query on every page.
    given: tuple[str | None, str | None] = field(default=(None, None), compare=False)

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("notes")
        out.pop("given")
        out["statuses"] = list(self.statuses)
        for k in ("since", "until"):
            if out[k] is not None:
                out[k] = out[k].isoformat()
        return out

    def key(self) -> str:
        """Names this query (not its page size): a cursor carries it."""
        named = self.as_json()
        named["since"], named["until"] = (g or t for g, t in zip(self.given, (named["since"], named["until"]),
                                                                  strict=True))
        text = json.dumps(named, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _text(raw: Mapping[str, Any], name: str) -> str | None:
    value = raw.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise UsageError(f"{name} must be a string")
    if len(value) > _TEXT_LIMIT or "\x00" in value:
        raise UsageError(f"{name} is not a value ms07 stores (too long, or a NUL byte)")
    return value


def parse_statuses(value: Any, allowed: tuple[str, ...] = STATUSES) -> tuple[str, ...]:
    """``dead,failed`` or ``["dead", "failed"]`` -> ('dead', 'failed'); unknown names refused."""
    if value is None or value == "" or value == []:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(s, str) for s in items):
        raise UsageError("status must be a comma-separated list of statuses")
    out: list[str] = []
    for s in (s.strip().lower() for s in items):
        if s not in allowed:
            raise UsageError(f"unknown status {s!r}: one of {', '.join(allowed)}")
        if s not in out:
            out.append(s)
    return tuple(out)


def parse_filter(raw: Mapping[str, Any], now: dt.datetime | None = None) -> JobFilter:
    """The filter in ``raw`` (query parameters, a JSON body, CLI options), checked."""
    unknown = [k for k in raw if k not in FILTER_FIELDS]
    if unknown:
        raise UsageError(f"unknown filter {unknown[0]!r}: one of {', '.join(FILTER_FIELDS)}")
    notes: list[str] = []
    bounds: dict[str, dt.datetime | None] = {}
    for name in ("since", "until"):
        text = _text(raw, name)
        bounds[name] = None
        if text is not None:
            bounds[name], note = parse_time(text, name, now)
            if note:
                notes.append(note)
    if bounds["since"] and bounds["until"] and bounds["since"] >= bounds["until"]:
        raise UsageError(f"since ({bounds['since'].isoformat()}) is not before until ({bounds['until'].isoformat()})")
    on = _text(raw, "on") or "created"
    if on not in TIME_FIELDS:
        raise UsageError(f"on {on!r}: since/until bound the created or the finished time (created, finished)")
    return JobFilter(
        destination=_text(raw, "destination"),
        statuses=parse_statuses(raw.get("status")),
        since=bounds["since"],
        until=bounds["until"],
        on=on,
        correlation_id=_text(raw, "correlation_id"),
        idempotency_key=_text(raw, "idempotency_key"),
        error_code=_text(raw, "error_code"),
        notes=tuple(notes),
        given=(_text(raw, "since"), _text(raw, "until")),
    )


def parse_limit(value: Any) -> int:
    if value is None or value == "":
        return DEFAULT_LIMIT
    try:
        limit = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"limit {value!r} is not a whole number") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise UsageError(f"limit {limit} is out of range (1 to {MAX_LIMIT})")
    return limit


def encode_cursor(flt: JobFilter, when: dt.datetime, distribution_id: str) -> str:
    """The last row's sort key (its created or finished time, its id) and the query's name."""
    data = json.dumps({"k": flt.key(), "t": when.isoformat(), "i": distribution_id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(data.encode()).decode().rstrip("=")


def decode_cursor(flt: JobFilter, cursor: str) -> tuple[dt.datetime, str]:
    """The (time, id) after which the next page starts; a cursor made by another
    query (another filter) or not by ms07 at all is refused."""
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        key, when, did = data["k"], dt.datetime.fromisoformat(data["t"]), str(data["i"])
        import uuid

        did = str(uuid.UUID(did))
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise UsageError("cursor is not one ms07 made (pass next_cursor back as it came)") from None
    if key != flt.key():
        raise UsageError("cursor belongs to another query: pass it with the same filters that made it")
    return when, did


async def search(
    conn: psycopg.AsyncConnection[Any], flt: JobFilter, limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> dict[str, Any]:
    """One page, newest first: ``{"distributions": [...], "next_cursor": str | None}``."""
    from ms07.ops.status import job_shape
    from ms07.store import search as store

    after = decode_cursor(flt, cursor) if cursor else None
    rows = await store.find_jobs(conn, flt, limit + 1, after)
    page = rows[:limit]
    next_cursor = encode_cursor(flt, *store.sort_key(flt, page[-1])) if len(rows) > limit else None
    return {"distributions": [job_shape(r) for r in page], "next_cursor": next_cursor}
