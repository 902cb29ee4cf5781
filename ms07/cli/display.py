"""The terminal's one vocabulary of colour: a style per :class:`ms07.levels.Level`.

Every renderer colours a verdict word through :func:`style` (diagnose statuses and
severities, recover step outcomes, runbook step states, the engine's health), so the same
level looks the same everywhere. Rich drops colour when ``NO_COLOR`` is set.
"""

from __future__ import annotations

from ms07.levels import Level, level_of

COLOUR = {
    Level.HEALTHY: "green",
    Level.WARNING: "yellow",
    Level.CRITICAL: "red",
    Level.UNKNOWN: "magenta",
}
NEUTRAL = {"running": "cyan"}  # in progress; other neutral words (skipped, not run) are dim


def style(word: str, *, bold: bool = False) -> str:
    """The Rich style of a verdict word (``bold`` for a headline)."""
    level = level_of(word)
    if level is None:
        return NEUTRAL.get(word, "dim")
    return f"bold {COLOUR[level]}" if bold else COLOUR[level]


def markup(word: str) -> str:
    """``word`` in Rich markup, coloured by its level."""
    return f"[{style(word)}]{word}[/]"
