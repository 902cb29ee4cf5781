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
from ms07.store.status import JobStatus

log = logs.get("destinations")

REMOVED_CODE = "DESTINATION_REMOVED"
# Secret values a request may carry, by section; each is stored encrypted and named in
# the spec by its reference ``<field>_env: ms07-stored:<destination>/<section>.<field>``.
SECRET_FIELDS = {"auth": ("token", "value", "password", "client_secret"), "signing": ("secret", "previous_secret")}


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
    """The settings every process should work with: the database's destinations.

    Read in a transaction of its own: left open, it would swallow the caller's next one
    (a submit's commit must precede its XADD, and would have become a savepoint)."""
    async with conn.transaction():
        managed = await rows(conn)
    current, bad = in_force(settings, managed)
    for line in load_secrets(managed):
        log.warning("stored secrets not loaded", detail=logs.clip(line, 300))
    for line in bad:
        log.warning("stored destination does not validate under the current settings", detail=logs.clip(line, 300))
    return current


def view(row: dict[str, Any]) -> dict[str, Any]:
    """The API's and ``--json``'s shape of one destination: its spec with secret
    references only (env var and file names), never a secret value; of a secret stored
    encrypted, its fingerprint and when it changed."""
    spec = dict(row["spec"])
    spec["auth"] = {k: v for k, v in (spec.get("auth") or {}).items() if v is not None}
    secrets = {f: {"fingerprint": e["fingerprint"], "changed_at": e["changed_at"],
                   **({"expires_at": e["expires_at"]} if e.get("expires_at") else {})}
               for f, e in sorted((row.get("secrets") or {}).items())}
    return {"name": row["name"], "config": spec, "secrets": secrets, "version": row["version"],
            "paused": row["paused"],
            "paused_at": row.get("paused_at"), "paused_reason": row.get("paused_reason"),
            "created_at": row.get("created_at"), "updated_at": row.get("updated_at"),
            "changed_by": row.get("changed_by")}


async def open_counts(conn: psycopg.AsyncConnection[Any], name: str) -> dict[str, int]:
    return await store.unfinished_counts(conn, name)


# ------------------------------------------------------------------ secrets


def stored_ref(name: str, field: str) -> str:
    from ms07.config import STORED_PREFIX

    return f"{STORED_PREFIX}{name}/{field}"


def _take_secrets(raw: dict[str, Any], name: str, source: str) -> dict[str, str]:
    """Take the secret values out of a body (in place), leaving their references."""
    out: dict[str, str] = {}
    for section, fields in SECRET_FIELDS.items():
        sec = raw.get(section)
        if not isinstance(sec, dict):
            continue
        sec = raw[section] = dict(sec)
        for f in fields:
            if f not in sec:
                continue
            value, ref = sec.pop(f), stored_ref(name, f"{section}.{f}")
            if not isinstance(value, str) or not value.strip():
                raise UsageError(f"{source}: {section}.{f}: must be a non-empty string")
            if sec.get(f"{f}_file") or sec.get(f"{f}_env") not in (None, ref):
                raise UsageError(f"{source}: {section}.{f}: give the secret or a reference "
                                 f"({f}_env, {f}_file), not both")
            sec[f"{f}_env"], sec[f"{f}_file"] = ref, None
            out[f"{section}.{f}"] = value
    return out


def _referenced(dest: DestinationConfig) -> list[str]:
    """The fields whose stored secret the destination's spec still names."""
    spec = destspec.to_spec(dest)
    return [f"{section}.{f}" for section, fields in SECRET_FIELDS.items() for f in fields
            if (spec.get(section) or {}).get(f"{f}_env") == stored_ref(dest.name, f"{section}.{f}")]


async def _store_secrets(conn: psycopg.AsyncConnection[Any], dest: DestinationConfig, given: dict[str, str],
                         current: dict[str, Any], operator: str) -> list[str]:
    """Encrypt and store ``given``, drop the stored secrets no longer referenced; the
    fields that changed."""
    import datetime as dt

    from ms07 import secretbox

    keep = _referenced(dest)
    if given:
        ring = secretbox.keyring(required_for="a secret given in a request")
        assert ring is not None  # nosec B101 - keyring() raised otherwise
        now = dt.datetime.now(dt.UTC).isoformat()
        entries = {f: {"ciphertext": ring.encrypt(v, f"{dest.name}/{f}"), "fingerprint": secretbox.fingerprint(v),
                       "changed_at": now} for f, v in given.items()}
        for value in given.values():
            logs.register_secret(value)
    else:
        entries = {}
    dropped = [f for f in current if f not in keep]
    if entries or dropped:
        await store.set_secrets(conn, dest.name, entries, keep, operator)
    return sorted([*entries, *dropped])


def load_secrets(managed: dict[str, dict[str, Any]]) -> list[str]:
    """Decrypt the stored secrets into this process (``config.STORED_SECRETS``); a line
    for each destination whose secrets do not decrypt (no key, a wrong key)."""
    from ms07 import secretbox
    from ms07.config import STORED_SECRETS

    ring, problems = None, []
    for name, row in managed.items():
        if not row.get("secrets"):
            continue
        try:
            ring = ring or secretbox.keyring(required_for=f"destination {name!r} (its secrets are stored encrypted)")
            assert ring is not None  # nosec B101 - keyring() raised otherwise
            values = {stored_ref(name, f): ring.decrypt(e["ciphertext"], f"{name}/{f}")
                      for f, e in row["secrets"].items()}
        except ConfigError as exc:
            problems.append(f"destination {name}: {exc}")
            continue
        for value in values.values():
            logs.register_secret(value)
        STORED_SECRETS.update(values)
    return problems


DEFAULT_KEEP_PREVIOUS = 86400.0


async def rotate_signing(conn: psycopg.AsyncConnection[Any], settings: Settings, name: str, *, operator: str,
                         secret: str | None = None, keep_previous: float = DEFAULT_KEEP_PREVIOUS,
                         dry_run: bool = False) -> dict[str, Any]:
    """A new signing secret (``secret``, or a fresh ``whsec_`` one) stored encrypted; the
    current one becomes the previous, still signing beside it (both signatures sent, as
    Standard Webhooks allows) for ``keep_previous`` seconds, then dropped by the engines.
    The new value is never returned: the receiver is given it out of band, or ``secret``
    is how the caller sets a value it knows."""
    import base64
    import datetime as dt
    import os

    from ms07.config import resolve_secret

    if not keep_previous > 0:
        raise UsageError(f"keep_previous: must be positive, got {keep_previous:g}")
    if secret is not None and (not isinstance(secret, str) or not secret.strip()):
        raise UsageError("secret: must be a non-empty string")
    async with conn.transaction():
        await store.lock(conn)
        current = await rows(conn)
        if name not in current:
            raise NotFound(f"unknown destination {name!r}")
        load_secrets({name: current[name]})
        dest = destspec.from_spec(current[name]["spec"])
        if dest.signing is None:
            raise UsageError(f"destination {name!r} does not sign its deliveries: add signing first")
        old = resolve_secret(dest.signing.secret_env, dest.signing.secret_file,
                             f"destinations.{name}.signing.secret")
        new = secret or "whsec_" + base64.b64encode(os.urandom(32)).decode()
        if dry_run:
            return {"name": name, "dry_run": True, "keep_previous_seconds": keep_previous}
        unset = dict.fromkeys(("secret_env", "secret_file", "previous_secret_env", "previous_secret_file"))
        patch = {"signing": {"secret": new, "previous_secret": old, **unset}}
        merged = _merge(_given(current[name]["spec"]), patch)
        given = _take_secrets(merged, name, "rotation")
        dest = destspec.parse_one(settings, merged, "rotation",
                                  [destspec.from_spec(r["spec"]) for n, r in current.items() if n != name])
        await _write(conn, dest, operator)
        await _store_secrets(conn, dest, given, current[name].get("secrets") or {}, operator)
        expires = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=keep_previous)).isoformat()
        await conn.execute(
            """UPDATE destinations
                  SET secrets = jsonb_set(secrets, '{signing.previous_secret,expires_at}', to_jsonb(%s::text))
                WHERE name = %s""", (expires, name))
        await _audit(conn, operator, "rotate-secret", name, {"keep_previous_seconds": keep_previous})
        return view((await rows(conn))[name])


async def drop_expired_previous(conn: psycopg.AsyncConnection[Any], settings: Settings, operator: str) -> list[str]:
    """Drop the previous signing secrets whose window is over (every engine calls this
    once a second; the lock makes one of them do it)."""
    cur = await conn.execute(
        "SELECT name FROM destinations WHERE (secrets -> 'signing.previous_secret' ->> 'expires_at')::timestamptz"
        " < now()")
    due = [r[0] for r in await cur.fetchall()]
    for name in due:
        await edit(conn, settings, name, {"signing": dict.fromkeys(("previous_secret_env", "previous_secret_file"))},
                   operator=operator, source="rotation window")
    return due


async def rekey(conn: psycopg.AsyncConnection[Any], *, operator: str, dry_run: bool = False) -> dict[str, Any]:
    """Re-encrypt every stored secret with the first key of MS07_SECRET_KEY."""
    from ms07 import secretbox

    ring = secretbox.keyring(required_for="ms07 secrets rekey")
    assert ring is not None  # nosec B101 - keyring() raised otherwise
    done: dict[str, list[str]] = {}
    async with conn.transaction():
        await store.lock(conn)
        for name, row in (await rows(conn)).items():
            secrets = row.get("secrets") or {}
            stale = {f: e for f, e in secrets.items() if not ring.current(e["ciphertext"])}
            if not stale:
                continue
            done[name] = sorted(stale)
            if dry_run:  # still proves that every one of them decrypts
                for f, e in stale.items():
                    ring.decrypt(e["ciphertext"], f"{name}/{f}")
                continue
            fresh = {f: {**e, "ciphertext": ring.encrypt(ring.decrypt(e["ciphertext"], f"{name}/{f}"), f"{name}/{f}")}
                     for f, e in stale.items()}
            await store.set_secrets(conn, name, fresh, list(secrets), operator, bump=False)
        if done and not dry_run:
            await _audit(conn, operator, "rekey", ",".join(done), {"fields": done})
    return {"reencrypted": done, "dry_run": dry_run, "key": secretbox.key_id(ring.keys[0])}


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
        raw = dict(raw) if isinstance(raw, dict) else raw
        given = _take_secrets(raw, str(raw.get("name")), source) if isinstance(raw, dict) else {}
        dest = destspec.parse_one(settings, raw, source, others)
        if dest.name in current:
            raise Conflict(f"destination {dest.name!r} exists; change it with PATCH or `ms07 destinations edit`")
        if dry_run:
            return {"name": dest.name, "config": dest.public(), "dry_run": True}
        await _write(conn, dest, operator)
        await _store_secrets(conn, dest, given, {}, operator)
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
        given = _take_secrets(merged, name, source)
        others = [destspec.from_spec(r["spec"]) for n, r in current.items() if n != name]
        dest = destspec.parse_one(settings, merged, source, others)
        keys = destspec.changed_keys(current[name]["spec"], destspec.to_spec(dest))
        if dry_run:
            return {"name": name, "changed": sorted({*keys, *given}), "dry_run": True}
        await _write(conn, dest, operator)
        keys = sorted({*keys, *await _store_secrets(conn, dest, given, current[name].get("secrets") or {}, operator)})
        if not keys:
            return {**view(current[name]), "changed": []}
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
            parked = await store.park_unfinished(conn, name, REMOVED_CODE, f"destination {name} removed by {operator}")
        await store.remove(conn, name)
        await _audit(conn, operator, "remove", name, {"parked": len(parked)})
    if parked:  # after the commit: a DLQ entry never names a job that is still open
        from ms07.engine.committer import DlqRecord, to_dlq

        for i in range(0, len(parked), 500):
            await to_dlq(queue, [DlqRecord(d, name, "destination_removed", REMOVED_CODE,
                                           f"destination {name} removed", "", "") for d in parked[i:i + 500]])
    return {"name": name, "removed": True, "parked": len(parked)}
