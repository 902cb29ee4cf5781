"""Findings, check results and the status/exit-code arithmetic of ``ms07 diagnose``.

Statuses follow the monitoring-plugins convention (exit 0 OK, 1 WARNING, 2 CRITICAL,
3 UNKNOWN). Combining them uses its ``max_state_alt`` order, OK < UNKNOWN < WARNING <
CRITICAL: a problem actually found outranks a part that could not be checked, so a
check that sees stuck jobs but cannot reach Redis still says CRITICAL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ms07.levels import SEVERITIES, Level, worst
from ms07.logs import redact

HEALTHY, UNKNOWN, WARNING, CRITICAL = Level.HEALTHY, Level.UNKNOWN, Level.WARNING, Level.CRITICAL
_RANK = {level: level.rank for level in Level}
EXIT_CODES = {level: level.exit_code for level in Level}
FINDING_KEYS = ("id", "severity", "summary", "evidence", "remedy", "command")

# What matters most among findings of one status (the headline after a crash
# was a dead consumer, the engine being down was the last row): nothing is delivering >
# a destination is down > everything else. Checks may set ``impact`` on a finding; these
# are the defaults by finding id.
NOTHING_DELIVERS, DESTINATION_DOWN, OTHER = 2, 1, 0
IMPACT = {
    "health.unreachable": NOTHING_DELIVERS,
    "queue.no_live_workers": NOTHING_DELIVERS,
    "errors.destination_down": DESTINATION_DOWN,
    "timeouts.circuit_open": DESTINATION_DOWN,
    "timeouts.probe_unreachable": DESTINATION_DOWN,
    "timeouts.probe_timeout": DESTINATION_DOWN,
    "timeouts.probe_http_error": DESTINATION_DOWN,
    "timeouts.destination_unhealthy": DESTINATION_DOWN,
}


def severity_at_least(severity: str, minimum: str) -> bool:
    return SEVERITIES.index(severity) >= SEVERITIES.index(minimum)


@dataclass
class Finding:
    """One verdict: what was seen, the proof, what to do and the exact next command.

    ``unknown`` marks a part that could not be checked (a dependency out of reach):
    it makes the check UNKNOWN rather than counting with its severity. ``subject`` names
    what a repeated finding is about (a destination, a worker): alerts keep them apart.
    """

    id: str
    severity: str
    summary: str
    evidence: str = ""
    remedy: str = ""
    command: str = ""
    unknown: bool = False
    subject: str = ""
    impact: int | None = None  # None: IMPACT's default for the id

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"bad severity {self.severity!r}")
        if self.impact is None:
            self.impact = IMPACT.get(self.id, OTHER)

    @property
    def order(self) -> tuple[int, int]:
        """Sort key, most important first: the status, then what it stops (``IMPACT``)."""
        return (-_RANK[self.status], -(self.impact or 0))

    @property
    def status(self) -> str:
        if self.unknown:
            return UNKNOWN
        return {"info": HEALTHY, "warning": WARNING, "critical": CRITICAL}[self.severity]

    def as_json(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in FINDING_KEYS}


@dataclass
class Section:
    """A table of evidence shown under a check's findings (Rich output only).

    ``chart`` holds (label, value, over_threshold) bars drawn after the table.
    """

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    chart: list[tuple[str, float, bool]] | None = None
    unit: str = ""


@dataclass
class CheckResult:
    """Everything one check found. ``details`` keeps the raw data for library callers."""

    check: str
    findings: list[Finding] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    duration_ms: float = 0.0
    _unchecked: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def add(
        self,
        name: str,
        severity: str,
        summary: str,
        evidence: str = "",
        remedy: str = "",
        command: str = "",
        *,
        unknown: bool = False,
        subject: str = "",
        impact: int | None = None,
    ) -> Finding:
        # Evidence quotes destinations' error bodies: never let a credential through.
        finding = Finding(f"{self.check}.{name}", severity, redact(summary), redact(evidence), remedy, command,
                          unknown, subject, impact)
        self.findings.append(finding)
        return finding

    def not_checked(self, dependency: str, part: str, reason: str, remedy: str = "", command: str = "",
                    *, problem: str = "unreachable") -> None:
        """Record that ``part`` could not be checked because ``dependency`` is out of reach:
        one finding per dependency, listing every part it cost."""
        parts = self._unchecked.setdefault(dependency, [])
        if part not in parts:
            parts.append(part)
        summary = f"{dependency} {problem}; not checked: {', '.join(parts)}"
        existing = self.finding(f"{dependency}_unavailable")
        if existing is not None:
            existing.summary = summary
            return
        self.add(
            f"{dependency}_unavailable",
            "warning",
            summary,
            reason,
            remedy or f"restore access to {dependency}, then run the check again",
            command,
            unknown=True,
        )

    def section(self, title: str, columns: list[str], **kwargs: Any) -> Section:
        s = Section(title, columns, **kwargs)
        self.sections.append(s)
        return s

    def finding(self, suffix: str) -> Finding | None:
        """The finding with id ``<check>.<suffix>``, if any (handy for runbooks and tests)."""
        return next((f for f in self.findings if f.id == f"{self.check}.{suffix}"), None)

    @property
    def status(self) -> str:
        return worst(*(f.status for f in self.findings))

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def as_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "status": self.status,
            "findings": [f.as_json() for f in self.findings],
        }


@dataclass
class Report:
    """The result of several checks (``diagnose all``): the worst status wins."""

    results: list[CheckResult]

    @property
    def status(self) -> str:
        return worst(*(r.status for r in self.results))

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def findings(self) -> list[tuple[str, Finding]]:
        return [(r.check, f) for r in self.results for f in r.findings]

    def ranked(self) -> list[tuple[str, Finding]]:
        """Every finding, most important first (stable: checks keep their order on ties)."""
        return sorted(self.findings(), key=lambda cf: cf[1].order)

    def headline(self) -> tuple[str, Finding] | None:
        """The one finding to read first, if anything is not healthy."""
        top = self.ranked()
        return top[0] if top and top[0][1].status != HEALTHY else None

    def as_json(self) -> dict[str, Any]:
        return {"status": self.status, "checks": [r.as_json() for r in self.results]}


def fmt_duration(seconds: float | None) -> str:
    """``95`` -> ``1m35s``; compact, for evidence lines."""
    if seconds is None:
        return "-"
    seconds = float(seconds)
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    if s < 1:
        return f"{sign}{s * 1000:.0f}ms"
    if s < 60:
        return f"{sign}{s:.1f}s"
    if s < 3600:
        m, rest = int(s // 60), int(s % 60)
        return f"{sign}{m}m{rest:02d}s" if rest else f"{sign}{m}m"
    if s < 86400:
        h, m = int(s // 3600), int(s % 3600 // 60)
        return f"{sign}{h}h{m:02d}m" if m else f"{sign}{h}h"
    d, h = int(s // 86400), int(s % 86400 // 3600)
    return f"{sign}{d}d{h:02d}h" if h else f"{sign}{d}d"


def fmt_bytes(n: float | None) -> str:
    """``1536`` -> ``1.5 KiB``; ``-`` for None. The one byte formatter (diagnose, the
    console, ``ms07 health``)."""
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def listing(items: list[str], limit: int = 10) -> str:
    """``a, b, c (+7 more)``."""
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"
