"""Destinations managed at runtime: add, edit, pause, resume, remove, apply.

PostgreSQL is their source of truth (``destinations.spec``, migration 0004). Every
function here takes a connection and does its change in one transaction with the
managed set locked, notifies the engines (``store.destinations.CHANNEL``) and writes an
audit row (``recovery_audit``, plan ``destinations``); the CLI and the HTTP API both
call them, so the two doors validate and record alike. ``dry_run`` computes the same
answer and writes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import psycopg

from ms07 import destspec, logs
from ms07.config import DestinationConfig, Settings
from ms07.errors import ConfigError, Conflict, NotFound, UsageError
from ms07.store import audit
from ms07.store import destinations as store
from ms07.store.status import HELD, OPEN, JobStatus, sql_list

log = logs.get("destinations")

REMOVED_CODE = "DESTINATION_REMOVED"
_UNFINISHED_SQL = sql_list(OPEN | HELD)


# ------------------------------------------------------------------ reading


async def rows(conn: psycopg.AsyncConnection[Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in await store.managed(conn)}


def in_force(settings: Settings, managed: dict[str, dict[str, Any]]) -> tuple[Settings, list[str]]:
    """``settings`` with the managed destinations in place of the config's (those the
    config lists first, in its order, then the others by name), and a line for each
    stored destination that no longer passes validation under these global settings
    (still used, as stored: the caller logs the line). No managed rows: the config's list."""
    if not managed:
        return settings, []
    order = {d.name: i for i, d in enumerate(settings.destinations)}
    good: list[DestinationConfig] = []
    bad: list[str] = []
    for name in sorted(managed, key=lambda n: (order.get(n, len(order)), n)):
        dest = destspec.from_spec(managed[name]["spec"])
        try:
            destspec.check(settings, [dest], "database")
        except ConfigError as exc:
            bad.append(f"{name}: {exc}")
        good.append(dest)
    return destspec.with_destinations(settings, good), bad


async def settings_in_force(conn: psycopg.AsyncConnection[Any], settings: Settings) -> Settings:
    """The settings every process should work with: the database's destinations."""
    current, bad = in_force(settings, await rows(conn))
    for line in bad:
        log.warning("stored destination does not validate under the current settings", detail=logs.clip(line, 300))
    return current


def view(row: dict[str, Any]) -> dict[str, Any]:
    """The API's and ``--json``'s shape of one destination: its spec with secret
    references only (env var and file names), never a secret value."""
    spec = dict(row["spec"])
    spec["auth"] = {k: v for k, v in (spec.get("auth") or {}).items() if v is not None}
    return {"name": row["name"], "config": spec, "version": row["version"], "paused": row["paused"],
            "paused_at": row.get("paused_at"), "paused_reason": row.get("paused_reason"),
            "created_at": row.get("created_at"), "updated_at": row.get("updated_at"),
            "changed_by": row.get("changed_by")}


async def open_counts(conn: psycopg.AsyncConnection[Any], name: str) -> dict[str, int]:
    cur = await conn.execute(
        f"SELECT status, count(*) FROM distribution_jobs WHERE destination_name = %s AND status IN {_UNFINISHED_SQL}"
        " GROUP BY status", (name,))
    return {r[0]: int(r[1]) for r in await cur.fetchall()}


# ------------------------------------------------------------------ changing


async def _audit(conn: psycopg.AsyncConnection[Any], operator: str, step: str, name: str, detail: dict[str, Any],
                 command: str | None = None) -> None:
    await audit.record(conn, operator=operator, plan_id=f"dest-{uuid.uuid4().hex[:12]}", plan="destinations",
                       step=step, outcome="applied", command=command, detail={"destination": name, **detail})


async def _write(conn: psycopg.AsyncConnection[Any], dest: DestinationConfig, operator: str) -> int | None:
    return await store.upsert(conn, destspec.to_spec(dest), dest.public(), operator)


async def apply(conn: psycopg.AsyncConnection[Any], settings: Settings, wanted: Sequence[DestinationConfig], *,
                prune: bool, dry_run: bool, operator: str, command: str | None = None,
                audited: bool = True) -> destspec.Diff:
    """Make the managed set what ``wanted`` says (``kubectl apply``): add and change;
    with ``prune``, remove what it no longer lists. A pruned destination with unfinished
    jobs refuses the whole apply: nothing is written. ``audited`` False (the engine's
    start): a log line instead of an audit row, the audit being the operators' record."""
    async with conn.transaction():
        await store.lock(conn)
        current = await rows(conn)
        plan = destspec.diff({n: r["spec"] for n, r in current.items()}, wanted, prune=prune)
        for name in plan.removed:
            if counts := await open_counts(conn, name):
                raise Conflict(f"destination {name!r} has {sum(counts.values())} unfinished job(s); "
                               f"remove it first with `ms07 destinations remove {name} --open dead --yes` "
                               "(parks them in the DLQ), or keep it in the file")
        if dry_run or plan.empty:
            return plan
        by_name = {d.name: d for d in wanted}
        for name in [*plan.added, *plan.changed]:
            await _write(conn, by_name[name], operator)
        for name in plan.removed:
            await store.remove(conn, name)
        if audited:
            await _audit(conn, operator, "apply", ",".join([*plan.added, *plan.changed, *plan.removed]),
                         plan.as_dict(), command)
        else:
            log.info("destinations applied from the config", command=command, **plan.as_dict())
    return plan


async def start(conn: psycopg.AsyncConnection[Any], settings: Settings, *, apply_config: bool,
                operator: str) -> destspec.Diff | None:
    """What ``ms07 run`` does at start: with ``apply_config`` the config's list is
    applied (no prune: removing needs a decision about open jobs); without it the
    database wins, except on an empty managed set (a fresh installation, or the first
    start after the upgrade to 0004), which is seeded from the config."""
    async with conn.transaction():
        await store.lock(conn)
        empty = not await store.managed(conn)
    if not (apply_config or empty) or not settings.destinations:
        return None
    plan = await apply(conn, settings, settings.destinations, prune=False, dry_run=False, operator=operator,
                       command="ms07 run --apply-config" if apply_config else "ms07 run (seed)", audited=False)
    return plan


async def add(conn: psycopg.AsyncConnection[Any], settings: Settings, raw: Any, *, operator: str,
              dry_run: bool = False, source: str = "request body") -> dict[str, Any]:
    async with conn.transaction():
        await store.lock(conn)
        current = await rows(conn)
        others = [destspec.from_spec(r["spec"]) for r in current.values()]
        dest = destspec.parse_one(settings, raw, source, others)
        if dest.name in current:
            raise Conflict(f"destination {dest.name!r} exists; change it with PATCH or `ms07 destinations edit`")
        if dry_run:
            return {"name": dest.name, "config": dest.public(), "dry_run": True}
        await _write(conn, dest, operator)
        await _audit(conn, operator, "add", dest.name, {"url": logs.safe_url(dest.url)})
        return view((await rows(conn))[dest.name])


async def edit(conn: psycopg.AsyncConnection[Any], settings: Settings, name: str, patch: Any, *, operator: str,
               dry_run: bool = False, source: str = "request body") -> dict[str, Any]:
    """Merge ``patch`` (a JSON merge patch: a key set to null returns to its default)
    into the destination and validate the whole result."""
    if not isinstance(patch, dict):
        raise UsageError(f"{source}: the change must be a JSON object")
    if "name" in patch and patch["name"] != name:
        raise UsageError(f"{source}: name: a destination cannot be renamed; add a new one and remove this one")
    async with conn.transaction():
        await store.lock(conn)
        current = await rows(conn)
        if name not in current:
            raise NotFound(f"unknown destination {name!r}")
        merged = _merge(_given(current[name]["spec"]), patch)
        others = [destspec.from_spec(r["spec"]) for n, r in current.items() if n != name]
        dest = destspec.parse_one(settings, merged, source, others)
        keys = destspec.changed_keys(current[name]["spec"], destspec.to_spec(dest))
        if dry_run:
            return {"name": name, "changed": keys, "dry_run": True}
        if not keys:
            return {**view(current[name]), "changed": []}
        await _write(conn, dest, operator)
        await _audit(conn, operator, "edit", name, {"changed": keys})
        return {**view((await rows(conn))[name]), "changed": keys}


def _given(spec: dict[str, Any]) -> dict[str, Any]:
    """A stored spec as a body the converter reads again: unset (None) keys left out."""
    out: dict[str, Any] = {}
    for key, value in spec.items():
        if value is None:
            continue
        out[key] = _given(value) if isinstance(value, dict) and key != "headers" else value
    return out


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict) and key != "headers":
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


async def pause(conn: psycopg.AsyncConnection[Any], name: str, *, paused: bool, operator: str,
                reason: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    async with conn.transaction():
        current = await rows(conn)
        if name not in current:
            raise NotFound(f"unknown destination {name!r}")
        counts = await open_counts(conn, name)
        if dry_run:
            return {"name": name, "paused": current[name]["paused"], "would_change": current[name]["paused"] != paused,
                    "held": counts.get(JobStatus.PAUSED, 0)}
        changed = await store.set_paused(conn, name, paused, reason or ("paused by " + operator), operator)
        if changed:
            await _audit(conn, operator, "pause" if paused else "resume", name,
                         {"held": counts.get(JobStatus.PAUSED, 0)})
        return {**view((await rows(conn))[name]), "changed": bool(changed), "held": counts.get(JobStatus.PAUSED, 0)}


async def remove(conn: psycopg.AsyncConnection[Any], queue: Any, name: str, *, open_action: str | None,
                 operator: str, dry_run: bool = False) -> dict[str, Any]:
    """Retire a destination. Unfinished jobs (open or held) refuse it unless
    ``open_action`` is ``dead``: then they are parked in the DLQ with the reason
    ``destination_removed``."""
    if open_action not in (None, "dead"):
        raise UsageError(f"open: {open_action!r} is not an action (the one action is: dead)")
    async with conn.transaction():
        await store.lock(conn)
        if name not in await rows(conn):
            raise NotFound(f"unknown destination {name!r}")
        counts = await open_counts(conn, name)
        unfinished = sum(counts.values())
        if unfinished and open_action is None:
            raise Conflict(f"destination {name!r} has {unfinished} unfinished job(s) "
                           f"({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}); "
                           "say what becomes of them: open=dead parks them in the DLQ")
        if dry_run:
            return {"name": name, "removed": False, "dry_run": True, "unfinished": unfinished}
        parked: list[str] = []
        if unfinished:
            cur = await conn.execute(
                f"""UPDATE distribution_jobs SET status = '{JobStatus.DEAD}', last_error_code = %s, last_error = %s,
                           updated_at = now(), completed_at = now()
                     WHERE destination_name = %s AND status IN {_UNFINISHED_SQL} RETURNING distribution_id::text""",
                (REMOVED_CODE, f"destination {name} removed by {operator}", name))
            parked = [r[0] for r in await cur.fetchall()]
        await store.remove(conn, name)
        await _audit(conn, operator, "remove", name, {"parked": len(parked)})
    if parked:  # after the commit: a DLQ entry never names a job that is still open
        from ms07.engine.committer import DlqRecord, to_dlq

        for i in range(0, len(parked), 500):
            await to_dlq(queue, [DlqRecord(d, name, "destination_removed", REMOVED_CODE,
                                           f"destination {name} removed", "", "") for d in parked[i:i + 500]])
    return {"name": name, "removed": True, "parked": len(parked)}
