"""``ms07 status`` and ``GET /api/v1/distributions/{id}``: a job and its attempts."""

from __future__ import annotations

from typing import Any

import psycopg

from ms07.errors import NotFound, UsageError
from ms07.store import jobs

HEX = frozenset("0123456789abcdef")


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


async def resolve_id(conn: psycopg.AsyncConnection[Any], text: str) -> str:
    """The distribution id that ``text`` names: a whole id, or the first hex digits of
    exactly one (a short id copied from a log). NotFound when none matches, UsageError
    when it is not hex or when several match (naming a few)."""
    digits = text.strip().lower().replace("-", "")
    if not digits or not set(digits) <= HEX or len(digits) > 32:
        raise UsageError(f"{text!r} is not a distribution id (a UUID, or its first hex digits)")
    found = await jobs.ids_with_prefix(conn, digits)
    if not found:
        raise NotFound(f"no distribution {text}" if len(digits) == 32 else f"no distribution id starts with {text}")
    if len(found) > 1:
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise UsageError(f"{text!r} is the start of more than one distribution id ({shown}); give more digits")
    return found[0]


def job_shape(job: dict[str, Any]) -> dict[str, Any]:
    """A job as ``status`` and the search show it (a row of ``jobs.JOB_COLUMNS``), without attempts."""
    return {
        "distribution_id": job["distribution_id"],
        "destination": job["destination"],
        "status": job["status"],
        "correlation_id": job["correlation_id"],
        "priority": job["priority"],
        "attempt_count": job["attempt_count"],
        "max_attempts": job["max_attempts"],
        "last_error_code": job["last_error_code"],
        "last_error": job["last_error"],
        "next_attempt_at": _iso(job["next_attempt_at"]),
        "created_at": _iso(job["created_at"]),
        "updated_at": _iso(job["updated_at"]),
        "completed_at": _iso(job["completed_at"]),
        # Set when the payload was expunged (retention, DELETE .../payload): the record
        # stays, the job can no longer be replayed.
        "payload_expunged_at": _iso(job.get("payload_expunged_at")),
    }


def attempt_shape(a: dict[str, Any]) -> dict[str, Any]:
    return {
        "attempt": a["attempt"],
        "status": a["status"],
        "response_status_code": a["response_status_code"],
        "error_code": a["error_code"],
        "error_message": a["error_message"],
        "started_at": _iso(a["started_at"]),
        "completed_at": _iso(a["completed_at"]),
    }


async def distribution_status(conn: psycopg.AsyncConnection[Any], distribution_id: str) -> dict[str, Any] | None:
    job = await jobs.get_job(conn, distribution_id)
    if job is None:
        return None
    return {**job_shape(job), "attempts": [attempt_shape(a) for a in job["attempts"]]}
