"""``ms07 status`` and ``GET /api/v1/distributions/{id}``: a job and its attempts."""

from __future__ import annotations

from typing import Any

import psycopg

from ms07.store import jobs


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


async def distribution_status(conn: psycopg.AsyncConnection[Any], distribution_id: str) -> dict[str, Any] | None:
    job = await jobs.get_job(conn, distribution_id)
    if job is None:
        return None
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
        "attempts": [
            {
                "attempt": a["attempt"],
                "status": a["status"],
                "response_status_code": a["response_status_code"],
                "error_code": a["error_code"],
                "error_message": a["error_message"],
                "started_at": _iso(a["started_at"]),
                "completed_at": _iso(a["completed_at"]),
            }
            for a in job["attempts"]
        ],
    }
