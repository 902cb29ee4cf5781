"""One level type and one colour per level: every verdict word the toolkit prints has a
level (or is deliberately neutral), so no renderer needs a colour map of its own."""

from __future__ import annotations

import pytest

from ms07.cli import display
from ms07.levels import Level, level_of, worst

# What the commands print: diagnose statuses and severities, recover step and plan
# outcomes, runbook step states, the engine's /health states.
VERDICTS = {
    "healthy": Level.HEALTHY, "warning": Level.WARNING, "critical": Level.CRITICAL, "unknown": Level.UNKNOWN,
    "info": Level.HEALTHY, "ok": Level.HEALTHY, "completed": Level.HEALTHY, "dry-run": Level.HEALTHY,
    "failed": Level.CRITICAL, "blocked": Level.CRITICAL, "interrupted": Level.CRITICAL,
    "declined": Level.UNKNOWN, "passed": Level.HEALTHY, "found": Level.WARNING, "unmet": Level.WARNING,
    "unchecked": Level.UNKNOWN, "degraded": Level.WARNING, "unhealthy": Level.CRITICAL,
}


@pytest.mark.parametrize(("word", "level"), VERDICTS.items())
def test_every_verdict_word_has_its_level_and_that_level_s_colour(word: str, level: Level) -> None:
    assert level_of(word) is level
    assert display.style(word) == display.COLOUR[level]


@pytest.mark.parametrize("word", ["skipped", "not run", "pending"])
def test_neutral_words_are_dim(word: str) -> None:
    assert level_of(word) is None and display.style(word) == "dim"


def test_worst_follows_max_state_alt_and_exit_codes_the_plugin_convention() -> None:
    assert worst("healthy", "unknown") == Level.UNKNOWN
    assert worst("unknown", "warning") == Level.WARNING
    assert worst("warning", "critical", "unknown") == Level.CRITICAL
    assert worst() == Level.HEALTHY
    assert [lv.exit_code for lv in (Level.HEALTHY, Level.WARNING, Level.CRITICAL, Level.UNKNOWN)] == [0, 1, 2, 3]
    assert display.style("critical", bold=True) == "bold red"
