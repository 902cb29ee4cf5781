"""What a runbook is: its escalation, symptoms, steps and prevention notes.

The escalation matrix and the teams are the troubleshooting guide's ("Contatti e
Escalation"): a runbook names its priority, the response time that priority demands,
and the team (with its address) to escalate to when its steps do not fix the problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ms07.runbooks.commands import Command
from ms07.runbooks.expr import Expression

# priority -> (response time, the guide's description; docs/architecture.md, "Guide procedures")
PRIORITIES = {
    "P1": ("15m", "critical: the system is completely down"),
    "P2": ("1h", "high: critical functions are compromised"),
    "P3": ("4h", "medium: non-critical functions are affected"),
    "P4": ("24h", "low: minor problems"),
}
RESPONSE_TEXT = {"15m": "15 minutes", "1h": "1 hour", "4h": "4 hours", "24h": "24 hours"}
# team -> (address, what it looks after)
TEAMS = {
    "devops": ("devops@zenia.it", "infrastructure and deployment"),
    "backend": ("backend@zenia.it", "application logic"),
    "sre": ("sre@zenia.it", "reliability and performance"),
}
PHASES = ("diagnose", "remediation", "verification")


@dataclass
class Step:
    """One step: an ``ms07`` command, optionally guarded by ``when`` and judged by ``expect``."""

    index: int  # 1-based, across the phases
    phase: str
    run: str
    command: Command
    line: int
    title: str = ""
    when: Expression | None = None
    expect: Expression | None = None
    note: str = ""

    @property
    def heading(self) -> str:
        return self.title or self.run

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "phase": self.phase, "run": self.run}
        for key in ("title", "note"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.when:
            out["when"] = self.when.text
        if self.expect:
            out["expect"] = self.expect.text
        return out


@dataclass
class Runbook:
    """A validated runbook (build with :func:`ms07.runbooks.load`)."""

    id: str
    title: str
    priority: str
    response_time: str
    team: str
    email: str
    symptoms: list[str]
    steps: list[Step]
    prevention: list[str]
    summary: str = ""
    guide: str = ""
    source: Path | None = None
    alerts: list[str] = field(default_factory=list)

    def phase(self, name: str) -> list[Step]:
        return [s for s in self.steps if s.phase == name]

    @property
    def escalation(self) -> str:
        """``P2 (respond within 1 hour): backend (backend@zenia.it)``."""
        within = RESPONSE_TEXT[self.response_time]
        return f"{self.priority} (respond within {within}): {self.team} ({self.email})"

    @property
    def priority_text(self) -> str:
        return PRIORITIES[self.priority][1]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "summary": self.summary,
            "guide": self.guide,
            "severity": {"priority": self.priority, "response_time": self.response_time},
            "escalation": {"team": self.team, "email": self.email},
            "alerts": self.alerts,
            "symptoms": self.symptoms,
            **{phase: [s.as_dict() for s in self.phase(phase)] for phase in PHASES},
            "prevention": self.prevention,
            "source": str(self.source) if self.source else None,
        }
