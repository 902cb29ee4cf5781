"""The vocabulary of recovery plans: steps, checks, outcomes, results, the reporter hook.

:mod:`ms07.recover.plan` runs them; this module only describes them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ms07.errors import Ms07Error

if TYPE_CHECKING:
    from ms07.recover.plan import PlanContext

DONE = ("ok", "warning", "skipped")


@dataclass
class Check:
    """A precondition's or verification's verdict; ``ok=None``: only checkable when the
    plan runs (it depends on what an earlier step does)."""

    ok: bool | None
    message: str = ""

    @classmethod
    def passed(cls, message: str = "") -> Check:
        return cls(True, message)

    @classmethod
    def failed(cls, message: str) -> Check:
        return cls(False, message)

    @classmethod
    def later(cls, message: str) -> Check:
        return cls(None, message)


@dataclass
class Outcome:
    """What an action did. ``status``: ok, warning (done, but look at it) or skipped."""

    message: str = ""
    status: str = "ok"
    detail: dict[str, Any] = field(default_factory=dict)


class StepFailed(Ms07Error):
    """An action found it cannot go on; its message is the step's failure line."""


Probe = Callable[["PlanContext"], Awaitable[Check]]
Action = Callable[["PlanContext"], Awaitable[Outcome | None]]
Text = str | Callable[["PlanContext"], str]


@dataclass
class Step:
    title: str
    command: Text
    action: Action
    precondition: Probe | None = None
    verify: Probe | None = None
    changes: bool = True  # False: reads only (shown as such to the reviewer)
    if_interrupted: str = "its effect may be partial"
    needs_cluster: bool = False  # talks to the Kubernetes API


@dataclass
class Plan:
    """A named procedure. ``cli`` and ``args`` rebuild the command line for a resume."""

    name: str
    summary: str
    steps: list[Step]
    cli: str = ""
    args: list[str] = field(default_factory=list)
    after: Callable[[PlanContext], list[str]] | None = None
    # What to do where there is no Kubernetes (a process, systemd): "command   # why" lines.
    outside_cluster: list[str] = field(default_factory=list)


class Reporter:
    """What the CLI shows while a plan runs. The default shows nothing (runbooks read the
    structured result instead)."""

    def step_started(self, step: StepResult) -> None: ...
    def step_finished(self, step: StepResult) -> None: ...
    def info(self, message: str) -> None: ...
    def table(self, title: str, columns: list[str], rows: list[list[Any]]) -> None: ...
    def lines(self, title: str, lines: list[str]) -> None: ...
    def watch(self, title: str, sample: dict[str, Any] | None) -> None: ...
    def interrupted(self, result: PlanResult) -> None: ...


@dataclass
class StepResult:
    index: int
    title: str
    command: str
    changes: bool
    precondition: Check | None = None
    status: str = "pending"  # pending, running, ok, warning, skipped, failed, interrupted, not run
    message: str = ""
    verification: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    started_at: str | None = None
    duration_ms: float | None = None


@dataclass
class PlanResult:
    """The structured result of a preview or a run (``to_dict`` is the ``--json`` shape)."""

    plan: str
    plan_id: str
    operator: str
    status: str  # dry-run, blocked, declined, completed, failed, interrupted
    steps: list[StepResult]
    from_step: int = 1
    failed_step: int | None = None
    message: str = ""
    resume_command: str | None = None
    state: list[str] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)
    audit_file: str | None = None
    audit_db: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("dry-run", "completed")

    @property
    def exit_code(self) -> int:
        return {"dry-run": 0, "completed": 0, "interrupted": 130}.get(self.status, 1)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def new_plan_id(name: str) -> str:
    return f"{name}-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"
