"""Job and attempt statuses: the one home of their names and groups.

The values are the strings ``distribution_jobs.status`` and ``distribution_attempts.status``
hold (the CHECK constraints of migrations/0001_initial.sql, ``paused`` added by 0004; tests/store/test_status.py
keeps the two in step). Code compares and writes members, never string literals; SQL
embeds the groups through the fragments below, built once at import so every statement
stays a static text (some run unprepared on purpose: docs/architecture.md, "Data model").
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RETRYING = "retrying"
    PROCESSING = "processing"
    DELIVERED = "delivered"
    FAILED = "failed"  # parked: a permanent error
    DEAD = "dead"  # parked: retries exhausted, poison or unprocessable
    PAUSED = "paused"  # held for a paused destination: not attempted, not retried (0004)


class AttemptStatus(StrEnum):
    """One HTTP request's result (``distribution_attempts.status``)."""

    SUCCESS = "success"
    FAILED = "failed"


# Still to be delivered: the reconciler watches these.
OPEN = frozenset({JobStatus.QUEUED, JobStatus.RETRYING, JobStatus.PROCESSING})
# Held while their destination is paused: not finished, yet not "open" either (the
# reconciler must not re-enqueue them); resume sets them queued again.
HELD = frozenset({JobStatus.PAUSED})
# In the DLQ; ``dlq replay`` puts them back to queued.
PARKED = frozenset({JobStatus.FAILED, JobStatus.DEAD})
# ``completed_at`` set; never claimed again.
TERMINAL = frozenset({JobStatus.DELIVERED}) | PARKED


def sql_list(statuses: frozenset[JobStatus]) -> str:
    """``('a', 'b')`` for ``status IN <list>``, in the order the enum declares them (the
    partial indexes of the migration list them in that order too)."""
    return "(" + ", ".join(f"'{s.value}'" for s in JobStatus if s in statuses) + ")"


# "Open" has two spellings on purpose. ``IN OPEN_SQL`` implies the predicate of the
# partial index distribution_jobs_open_updated_idx: for scans of open jobs by age.
# ``NOT IN TERMINAL_SQL`` implies no partial index: for statements that pick jobs by id,
# which must probe the primary key whatever the statistics say (store/jobs.py, above _CLAIM).
OPEN_SQL = sql_list(OPEN)
PARKED_SQL = sql_list(PARKED)
TERMINAL_SQL = sql_list(TERMINAL)
