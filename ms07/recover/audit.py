"""The audit trail of a recovery: ``recovery_audit`` rows and a JSONL file.

Each executed step is written twice: when it starts (``running``, so a process killed
mid-step still leaves a trace) and with its outcome. Lines go to
``$MS07_STATE_DIR/audit/recovery.jsonl`` (append, fsync) and to PostgreSQL. A recovery
runs precisely when something is broken, so PostgreSQL is best effort: after its first
failure the plan goes on with the file alone, and every later line says so. If neither
can be written, the plan stops: an unaudited recovery is not allowed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import getpass
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ms07 import logs
from ms07.errors import Ms07Error

if TYPE_CHECKING:
    from ms07.recover.plan import PlanContext

DB_TIMEOUT = 10.0


class AuditError(Ms07Error):
    """Neither the audit table nor the audit file could be written."""


def operator() -> str:
    """Who runs the plan: ``$USER`` (the on-call engineer), else the login name."""
    name = os.environ.get("USER") or os.environ.get("LOGNAME")
    if name:
        return name
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in a minimal container
        return f"uid:{os.getuid()}"


def audit_path(state_dir: Path) -> Path:
    return state_dir / "audit" / "recovery.jsonl"


def _scrub(value: Any) -> Any:
    """Redact anything secret-looking (URL passwords, bearer tokens) before it is kept."""
    return json.loads(logs.redact(json.dumps(value, default=str)))


class AuditTrail:
    def __init__(self, ctx: PlanContext, plan: str) -> None:
        self.ctx = ctx
        self.plan = plan
        self.operator = operator()
        self.path = audit_path(ctx.settings.resolved_state_dir())
        self.db_error: str | None = None
        self.db_rows = 0

    @property
    def db_note(self) -> str:
        if self.db_error:
            return f"not recorded in recovery_audit: {self.db_error}"
        return f"{self.db_rows} rows in recovery_audit"

    async def write(
        self,
        step_index: int | None,
        step: str,
        command: str | None,
        outcome: str,
        detail: dict[str, Any],
    ) -> None:
        detail = _scrub(detail)
        command = logs.redact(command) if command else command
        in_db = await self._db(step_index, step, command, outcome, detail)
        line = {
            "at": dt.datetime.now(dt.UTC).isoformat(),
            "operator": self.operator,
            "plan_id": self.ctx.plan_id,
            "plan": self.plan,
            "step_index": step_index,
            "step": step,
            "command": command,
            "outcome": outcome,
            "detail": detail,
            "recorded_in_db": in_db,
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as out:
                out.write(json.dumps(line, default=str, ensure_ascii=False) + "\n")
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            if not in_db:
                raise AuditError(
                    f"cannot audit: {self.path}: {exc.strerror}; and PostgreSQL: {self.db_error}"
                ) from None
            self.ctx.reporter.info(
                f"audit file {self.path} not writable ({exc.strerror}); "
                "recorded in recovery_audit only"
            )

    async def _db(
        self,
        step_index: int | None,
        step: str,
        command: str | None,
        outcome: str,
        detail: dict[str, Any],
    ) -> bool:
        if self.db_error is not None:
            return False
        from ms07.store import audit

        async def insert() -> None:
            async with self.ctx.runtime.connection() as conn:
                await audit.record(
                    conn,
                    operator=self.operator,
                    plan_id=self.ctx.plan_id,
                    plan=self.plan,
                    step=step,
                    outcome=outcome,
                    step_index=step_index,
                    command=command,
                    detail=detail,
                )

        try:
            async with asyncio.timeout(DB_TIMEOUT):
                await insert()
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as exc:  # PostgreSQL down is exactly when db-connection runs
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.db_error = logs.clip(text, 200)
            self.ctx.reporter.info(
                f"audit: PostgreSQL unavailable ({self.db_error}); recording in {self.path} only"
            )
            return False
        self.db_rows += 1
        return True
