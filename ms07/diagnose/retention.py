"""The retention part of ``diagnose queue``: where the history goes.

Table and index sizes (from the catalog), the oldest row each table keeps, the policy
and its last successful run. Findings: ``queue.retention_off`` (nothing is ever
removed: the disk grows with every delivery), ``queue.retention_stale`` (no successful
run for a long while: no engine runs it, or every run fails), ``queue.retention_behind``
(finished jobs older than their age plus a margin are still there).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from ms07.diagnose.common import rows
from ms07.diagnose.context import Context
from ms07.diagnose.model import CheckResult, fmt_bytes, fmt_duration
from ms07.store import diagnose_sql as sql
from ms07.store.status import JobStatus

# Its findings are the queue check's: the runbook validator reads them from here too.
CHECK_PART = True


def _age(when: Any, now: dt.datetime) -> str:
    if when is None:
        return "-"
    return f"{when.isoformat(timespec='seconds')} ({fmt_duration((now - when).total_seconds())} ago)"


async def part(ctx: Context, r: CheckResult) -> None:
    ret = ctx.settings.retention
    async with ctx.connection() as conn:
        sizes = await rows(conn, sql.TABLE_SIZES)
        [oldest] = await rows(conn, sql.OLDEST_ROWS)
        [last] = await rows(conn, sql.LAST_RETENTION)
        now = (await (await conn.execute("SELECT now()")).fetchone())[0]  # type: ignore[index]
    r.details["retention"] = {"sizes": sizes, "oldest": oldest, "last_run": last,
                              "policy": {k: getattr(ret, k) for k in ("delivered_days", "dead_days",
                                                                          "attempts_days", "payload_days")}}
    table = r.section("tables (retention)", ["table", "rows (estimate)", "table", "indexes", "oldest row"])
    first = {"distribution_jobs": oldest["distribution_jobs"],
             "distribution_attempts": oldest["distribution_attempts"],
             "recovery_audit": oldest["recovery_audit"],
             "worker_heartbeat_samples": oldest["worker_heartbeat_samples"]}
    for s in sizes:
        table.rows.append([s["table_name"], str(s["estimated_rows"]), fmt_bytes(s["table_bytes"]),
                           fmt_bytes(s["index_bytes"]), _age(first.get(s["table_name"]), now)])
    total = sum(s["table_bytes"] + s["index_bytes"] for s in sizes)
    policy = ("off" if ret.off else
              f"delivered {ret.delivered_days or 'forever'} d, failed/dead {ret.dead_days or 'forever'} d, "
              f"attempts {ret.attempts_days or 'with their job'}, payloads {ret.payload_days or 'with their job'}")
    evidence = (f"history tables {fmt_bytes(total)}; oldest job {_age(oldest['distribution_jobs'], now)}; "
                f"last successful retention run {_age(last['last_success'], now)}")
    r.add("storage", "info", f"retention {policy}; the history takes {fmt_bytes(total)}", evidence)
    if ret.off:
        r.add("retention_off", "warning", "retention is off: every job, attempt and payload is kept forever",
              evidence, "the database grows with every delivery until the disk is full: set retention.delivered_days "
              "and retention.dead_days (docs/configuration.md), or prune by hand", "ms07 db prune --dry-run")
        return
    margin = max(3 * ret.interval_seconds, 3600.0)
    since = last["seconds_since_success"]
    # Never run is no finding by itself (a new installation): retention_behind says when it matters.
    if since is not None and since > margin:
        r.add("retention_stale", "warning", f"retention last succeeded {fmt_duration(float(since))} ago",
              evidence + f"; it should run every {fmt_duration(ret.interval_seconds)}",
              "the engine runs it on one replica at a time: check the engine runs and its logs "
              "(component retention), or run it by hand", "ms07 db prune --dry-run")
    behind = []
    for label, when, days in ((JobStatus.DELIVERED.value, oldest["delivered_job"], ret.delivered_days),
                              ("failed/dead", oldest["parked_job"], ret.dead_days)):
        if days and when is not None and (now - when).total_seconds() > days * 86400 + margin:
            behind.append(f"a {label} job finished {fmt_duration((now - when).total_seconds())} ago "
                          f"(kept {days:g} d)")
    if behind:
        r.add("retention_behind", "warning", "retention is behind: finished jobs past their age are still kept",
              "; ".join(behind), "run it by hand and read what stops it (a lock held, a timeout)",
              "ms07 db prune --dry-run")
