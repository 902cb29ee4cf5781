"""Validate a runbook document: any mistake is one line naming the file and the line.

Unknown keys (with a "did you mean"), the escalation matrix and its teams (ms07/runbooks/model.py), every
step's command and arguments (parsed as the CLI parses them), and every ``when:`` /
``expect:`` expression: its syntax and types, the finding ids and checks it names (ids
are read from the diagnose checks), and that an earlier step runs the check it reads.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from ms07.errors import RunbookError
from ms07.runbooks import commands
from ms07.runbooks.expr import ExprError, compile_expression
from ms07.runbooks.model import PHASES, PRIORITIES, RESPONSE_TEXT, TEAMS, Runbook, Step

TOP_KEYS = {
    "id",
    "title",
    "summary",
    "guide",
    "severity",
    "escalation",
    "alerts",
    "symptoms",
    *PHASES,
    "prevention",
}
REQUIRED = (
    "id",
    "title",
    "severity",
    "escalation",
    "symptoms",
    "diagnose",
    "remediation",
    "verification",
    "prevention",
)
STEP_KEYS = {"run", "title", "when", "expect", "note"}


class Validator:
    """Builds a :class:`Runbook` from a parsed document, or raises :class:`RunbookError`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, line: int | None, where: str, message: str) -> RunbookError:
        text = f"{self.path}:{line or 1}: {where}: {message}" if where else f"{self.path}:{line or 1}: {message}"
        # Keys and values come from the file and may hold line breaks: the error stays one line.
        if not text.isprintable():
            text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
        return RunbookError(text)

    def runbook(self, doc: Any) -> Runbook:
        if not isinstance(doc, dict):
            raise self.fail(
                1,
                "",
                "a runbook is a mapping (id, title, severity, escalation, symptoms, "
                "diagnose, remediation, verification, prevention)",
            )
        lines = getattr(doc, "lines", {})
        for key in doc:
            if key not in TOP_KEYS:
                raise self.fail(
                    lines.get(key),
                    str(key),
                    f"unknown key{self._hint(key, TOP_KEYS)}; known: "
                    + ", ".join(sorted(TOP_KEYS)),
                )
        for key in REQUIRED:
            if key not in doc:
                raise self.fail(1, key, "is required")
        rid = self.text(doc, "id", lines)
        if rid != self.path.stem:
            raise self.fail(
                lines.get("id"),
                "id",
                f"{rid!r} must be the file's name ({self.path.stem!r}): "
                "alerts link to runbooks/<id>.yaml",
            )
        priority, response = self.severity(doc["severity"], lines.get("severity"))
        team, email = self.escalation(doc["escalation"], lines.get("escalation"))
        steps: list[Step] = []
        ran: set[str] = set()
        for phase in PHASES:
            items = doc[phase]
            if items is None:
                items = []
            if not isinstance(items, list):
                raise self.fail(lines.get(phase), phase, "expected a list of steps")
            if not items and phase != "remediation":
                raise self.fail(lines.get(phase), phase, "needs at least one step")
            for i, item in enumerate(items):
                steps.append(self.step(item, phase, i, len(steps) + 1, lines.get(phase), ran))
        return Runbook(
            id=rid,
            title=self.text(doc, "title", lines),
            priority=priority,
            response_time=response,
            team=team,
            email=email,
            symptoms=self.strings(doc, "symptoms", lines),
            steps=steps,
            prevention=self.strings(doc, "prevention", lines),
            summary=self.text(doc, "summary", lines, required=False),
            guide=self.text(doc, "guide", lines, required=False),
            source=self.path,
            alerts=self.strings(doc, "alerts", lines, required=False),
        )

    def _hint(self, key: Any, known: set[str]) -> str:
        close = difflib.get_close_matches(str(key), sorted(known), n=1)
        return f" (did you mean {close[0]!r}?)" if close else ""

    def text(
        self, doc: dict[str, Any], key: str, lines: dict[Any, int], required: bool = True
    ) -> str:
        value = doc.get(key)
        if value is None and not required:
            return ""
        if not isinstance(value, str) or not value.strip():
            raise self.fail(lines.get(key), key, "expected some text")
        return value.strip()

    def strings(
        self, doc: dict[str, Any], key: str, lines: dict[Any, int], required: bool = True
    ) -> list[str]:
        value = doc.get(key)
        if value is None and not required:
            return []
        if not isinstance(value, list) or (required and not value):
            raise self.fail(lines.get(key), key, "expected a list of one or more lines of text")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise self.fail(lines.get(key), f"{key}[{i}]", "expected a line of text")
        return [v.strip() for v in value]

    def mapping(self, value: Any, where: str, line: int | None, keys: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(line, where, f"expected a mapping with {', '.join(sorted(keys))}")
        lines = getattr(value, "lines", {})
        for key in value:
            if key not in keys:
                raise self.fail(
                    lines.get(key, line),
                    f"{where}.{key}",
                    f"unknown key{self._hint(key, keys)}; known: {', '.join(sorted(keys))}",
                )
        for key in sorted(keys):
            if key not in value:
                raise self.fail(line, f"{where}.{key}", "is required")
        return value

    def severity(self, value: Any, line: int | None) -> tuple[str, str]:
        m = self.mapping(value, "severity", line, {"priority", "response_time"})
        lines = getattr(m, "lines", {})
        priority, response = str(m["priority"]), str(m["response_time"])
        if priority not in PRIORITIES:
            raise self.fail(
                lines.get("priority"),
                "severity.priority",
                f"{priority!r} is not in the escalation matrix (P1, P2, P3, P4)",
            )
        wanted = PRIORITIES[priority][0]
        if response != wanted:
            raise self.fail(
                lines.get("response_time"),
                "severity.response_time",
                f"{priority} must be answered within {wanted} ({RESPONSE_TEXT[wanted]}) by the "
                f"escalation matrix, not {response!r}",
            )
        return priority, response

    def escalation(self, value: Any, line: int | None) -> tuple[str, str]:
        m = self.mapping(value, "escalation", line, {"team", "email"})
        lines = getattr(m, "lines", {})
        team, email = str(m["team"]), str(m["email"])
        if team not in TEAMS:
            raise self.fail(
                lines.get("team"),
                "escalation.team",
                f"{team!r} is not a team of the escalation matrix ({', '.join(TEAMS)})",
            )
        if email != TEAMS[team][0]:
            raise self.fail(
                lines.get("email"),
                "escalation.email",
                f"{team} is reached at {TEAMS[team][0]}, not {email!r}",
            )
        return team, email

    def step(
        self, item: Any, phase: str, i: int, index: int, phase_line: int | None, ran: set[str]
    ) -> Step:
        where = f"{phase}[{i}]"
        if isinstance(item, str):  # a bare command line is a step too
            item = {"run": item}
            lines: dict[Any, int] = {"run": phase_line or 1}
        else:
            if not isinstance(item, dict):
                raise self.fail(
                    phase_line,
                    where,
                    "expected a step: a mapping with run (and title, when, expect, note)",
                )
            lines = getattr(item, "lines", {})
        line = lines.get("run") or (min(lines.values()) if lines else phase_line)
        for key in item:
            if key not in STEP_KEYS:
                raise self.fail(
                    lines.get(key, line),
                    f"{where}.{key}",
                    f"unknown key{self._hint(key, STEP_KEYS)}; "
                    f"known: {', '.join(sorted(STEP_KEYS))}",
                )
        if "run" not in item:
            raise self.fail(line, f"{where}.run", "is required (the ms07 command this step runs)")
        try:
            command = commands.parse(item["run"])
        except commands.CommandError as exc:
            raise self.fail(lines.get("run", line), f"{where}.run", str(exc)) from None
        for key in ("title", "note"):
            if key in item and (not isinstance(item[key], str) or not item[key].strip()):
                raise self.fail(lines.get(key, line), f"{where}.{key}", "expected some text")
        when = self.expression(item, "when", where, lines, line, ran)
        now = ran | set(command.checks)
        expect = self.expression(item, "expect", where, lines, line, now)
        ran.update(command.checks)
        return Step(
            index,
            phase,
            command.text,
            command,
            line or 1,
            str(item.get("title", "")).strip(),
            when,
            expect,
            str(item.get("note", "")).strip(),
        )

    def expression(
        self,
        item: dict[str, Any],
        key: str,
        where: str,
        lines: dict[Any, int],
        line: int | None,
        ran: set[str],
    ) -> Any:
        if key not in item:
            return None
        at = lines.get(key, line)
        value = item[key]
        if isinstance(value, bool):  # YAML reads a bare `true` as a boolean
            value = "true" if value else "false"
        try:
            expr = compile_expression(value)
        except ExprError as exc:
            # Quoted up to a point: the error must stay one readable line.
            shown = value
            if isinstance(value, str) and len(value) > 120:
                shown = f"{value[:100]}... ({len(value)} characters)"
            raise self.fail(at, f"{where}.{key}", f"{exc} in {shown!r}") from None
        from ms07.diagnose.runner import CHECKS

        known = commands.known_findings()
        for check, column in expr.refs.checks:
            if check not in CHECKS:
                raise self.fail(
                    at,
                    f"{where}.{key}",
                    f"status({check!r}): no such check "
                    f"(column {column}); checks: {', '.join(CHECKS)}",
                )
            self.needs(check, at, where, key, f"status({check!r})", ran)
        for fid, column in expr.refs.findings:
            check = fid.split(".", 1)[0]
            if check not in CHECKS or "." not in fid:
                raise self.fail(
                    at,
                    f"{where}.{key}",
                    f"finding id {fid!r} (column {column}) must be "
                    f"<check>.<name>, with a check of: {', '.join(CHECKS)}",
                )
            if known is not None and fid not in known[check]:
                close = difflib.get_close_matches(fid, sorted(known[check]), n=1)
                hint = (
                    f"did you mean {close[0]!r}?"
                    if close
                    else f"known: {', '.join(sorted(known[check]))}"
                )
                raise self.fail(
                    at,
                    f"{where}.{key}",
                    f"ms07 diagnose {check} reports no finding {fid!r} (column {column}); {hint}",
                )
            self.needs(check, at, where, key, repr(fid), ran)
        return expr

    def needs(
        self, check: str, line: int | None, where: str, key: str, what: str, ran: set[str]
    ) -> None:
        if check not in ran:
            earlier = "an earlier step" if key == "when" else "this or an earlier step"
            raise self.fail(
                line,
                f"{where}.{key}",
                f"{what} needs {earlier} that runs `ms07 diagnose {check}` "
                "(or `ms07 diagnose all`)",
            )
