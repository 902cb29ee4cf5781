"""One level type for every verdict the toolkit shows: diagnose statuses and finding
severities, recover step and plan outcomes, runbook step states, the engine's health.

Each command keeps the words its output has always used (``passed``, ``degraded``,
``NOT MET``...); :func:`level_of` says which :class:`Level` a word stands for, and that
is all a renderer needs (``ms07/cli/display.py`` has the one colour per level).
"""

from __future__ import annotations

from enum import StrEnum


class Level(StrEnum):
    """Monitoring-plugins states (exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)."""

    HEALTHY = "healthy"
    WARNING = "warning"
    CRITICAL = "critical"
    UNKNOWN = "unknown"

    @property
    def rank(self) -> int:
        """``max_state_alt`` order, OK < UNKNOWN < WARNING < CRITICAL: a problem actually
        found outranks a part that could not be checked."""
        return _RANK[self]

    @property
    def exit_code(self) -> int:
        return _EXIT[self]


_RANK = {Level.HEALTHY: 0, Level.UNKNOWN: 1, Level.WARNING: 2, Level.CRITICAL: 3}
_EXIT = {Level.HEALTHY: 0, Level.WARNING: 1, Level.CRITICAL: 2, Level.UNKNOWN: 3}

# Finding severities, lowest first ("none": a run without findings).
SEVERITIES = ("info", "warning", "critical")
SEVERITY_RANK = {"none": 0, "info": 1, "warning": 2, "critical": 3}

# Every other word of the toolkit's output -> its level. None: neutral (not a verdict:
# not run yet, skipped, in progress).
_WORDS: dict[str, Level | None] = {
    # diagnose finding severities
    "info": Level.HEALTHY,
    # recover steps and plans
    "ok": Level.HEALTHY,
    "completed": Level.HEALTHY,
    "dry-run": Level.HEALTHY,
    "later": Level.WARNING,
    "failed": Level.CRITICAL,
    "blocked": Level.CRITICAL,
    "interrupted": Level.CRITICAL,
    "declined": Level.UNKNOWN,
    # runbook step states
    "passed": Level.HEALTHY,
    "found": Level.WARNING,
    "unmet": Level.WARNING,
    "unchecked": Level.UNKNOWN,
    # the engine's /health
    "degraded": Level.WARNING,
    "unhealthy": Level.CRITICAL,
    # neutral
    "skipped": None,
    "not run": None,
    "pending": None,
    "running": None,
}


def level_of(word: str) -> Level | None:
    """The level ``word`` stands for; None for a neutral word (or one not known here)."""
    try:
        return Level(word)
    except ValueError:
        return _WORDS.get(word)


def worst(*levels: str) -> Level:
    """The level that wins when several are combined (``max_state_alt`` order)."""
    return max((Level(x) for x in levels), key=_RANK.__getitem__, default=Level.HEALTHY)
