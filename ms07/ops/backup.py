"""Queue backup and restore: every entry, with its id and fields, verified.

The guide's backup (``redis-cli --scan | head -1000``; docs/architecture.md, recovery 1) saved key names, not messages.
Ours writes every stream entry and delayed retry as JSON lines, closed by a trailer
with the count and a SHA-256 of the lines, then reads the file back and checks both. A
restore verifies the whole file before writing anything to Redis.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import re
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError, ResponseError

from ms07 import keys
from ms07.errors import BackupError
from ms07.queue import InvalidMessage, Queue, parse_entry

FORMAT = "ms07-queue-backup"
VERSION = 1
_CHUNK = 1000

Progress = Callable[[int], None]


@dataclass
class BackupResult:
    path: Path
    count: int
    sha256: str
    by_key: dict[str, int] = field(default_factory=dict)
    stream_ids: dict[str, list[str]] = field(default_factory=dict)
    delayed_members: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"path": str(self.path), "count": self.count, "sha256": self.sha256, "by_key": self.by_key}


@dataclass
class RestoreResult:
    restored: int = 0
    skipped_existing: int = 0
    new_ids: int = 0
    by_key: dict[str, int] = field(default_factory=dict)


def _line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


async def backup(
    queue: Queue,
    path: str | os.PathLike[str],
    *,
    include_delayed: bool = True,
    include_dlq: bool = False,
    progress: Progress | None = None,
) -> BackupResult:
    """Write every entry of every queue stream (and the delayed sets) to ``path``, verified."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    by_key: Counter[str] = Counter()
    stream_ids: dict[str, list[str]] = {}
    delayed_members: dict[str, list[str]] = {}
    streams = [keys.stream(q) for q in queue.priorities] + ([keys.DLQ] if include_dlq else [])
    try:
        with tmp.open("w", encoding="utf-8") as out:
            header = {
                "format": FORMAT,
                "version": VERSION,
                "created_at": dt.datetime.now(dt.UTC).isoformat(),
                "queues": queue.priorities,
            }
            out.write(_line(header) + "\n")

            def emit(obj: dict[str, Any], key: str) -> None:
                text = _line(obj)
                out.write(text + "\n")
                digest.update(text.encode() + b"\n")
                by_key[key] += 1
                if progress:
                    progress(1)

            for stream in streams:
                ids = stream_ids.setdefault(stream, [])
                async for entry_id, fields in queue.scan(stream, batch=_CHUNK):
                    emit({"t": "stream", "key": stream, "id": entry_id, "fields": fields}, stream)
                    ids.append(entry_id)
            if include_delayed:
                for q in queue.priorities:
                    dkey = keys.delayed(q)
                    members = delayed_members.setdefault(dkey, [])
                    async for member, score in queue.redis.zscan_iter(dkey, count=_CHUNK):
                        emit({"t": "delayed", "key": dkey, "member": member, "score": score}, dkey)
                        members.append(member)
            count = sum(by_key.values())
            out.write(_line({"t": "end", "count": count, "sha256": digest.hexdigest()}) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BackupError(f"cannot write backup {target}: {exc.strerror}") from None
    result = BackupResult(target, count, digest.hexdigest(), dict(by_key), stream_ids, delayed_members)
    verified = verify(target)
    if verified.count != count or verified.sha256 != result.sha256:
        raise BackupError(
            f"backup {target} did not verify: wrote {count} entries, read back {verified.count}"
        )
    return result


def _read(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BackupError(f"backup file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BackupError(f"cannot read backup file {path}: {exc}") from None
    lines = text.splitlines()
    if len(lines) < 2:
        raise BackupError(f"{path}: not an ms07 queue backup (too short)")
    try:
        header = json.loads(lines[0])
        trailer = json.loads(lines[-1])
    except json.JSONDecodeError:
        raise BackupError(f"{path}: not an ms07 queue backup (bad header or trailer)") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise BackupError(f"{path}: not an ms07 queue backup (format is missing)")
    if header.get("version") != VERSION:
        raise BackupError(f"{path}: backup version {header.get('version')} is not supported")
    if not isinstance(trailer, dict) or trailer.get("t") != "end":
        raise BackupError(f"{path}: backup is truncated (no trailer line)")
    entries = []
    for n, line in enumerate(lines[1:-1], start=2):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise BackupError(f"{path}: line {n} is not valid JSON") from None
        if not isinstance(obj, dict) or obj.get("t") not in ("stream", "delayed"):
            raise BackupError(f"{path}: line {n} is not a backup entry")
        problem = _entry_problem(obj)
        if problem:
            raise BackupError(f"{path}: line {n}: {obj['t']} entry {problem}")
        entries.append(obj)
    return header, entries, trailer


_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


def _entry_problem(obj: dict[str, Any]) -> str | None:
    """What is wrong with one entry's shape (None: nothing); the keys are checked by restore."""
    if not isinstance(obj.get("key"), str):
        return "needs a key"
    if obj["t"] == "stream":
        entry_id, fields = obj.get("id"), obj.get("fields")
        if not isinstance(entry_id, str) or not _STREAM_ID.fullmatch(entry_id) or entry_id == "0-0":
            return "needs an id like 1712345678901-0"
        # redis-py would raise on anything else, half-way through the restore.
        if not isinstance(fields, dict) or not fields:
            return "needs fields (a non-empty mapping)"
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items()):
            return "fields must map text to text"
        return None
    score = obj.get("score")
    if not isinstance(obj.get("member"), str):
        return "needs a member"
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        return "needs a finite score"
    return None


@dataclass
class Verified:
    count: int
    sha256: str
    entries: list[dict[str, Any]]


def verify(path: str | os.PathLike[str]) -> Verified:
    """Read a backup back; its count and checksum must match its trailer."""
    p = Path(path)
    _, entries, trailer = _read(p)
    digest = hashlib.sha256()
    for obj in entries:
        digest.update(_line(obj).encode() + b"\n")
    if trailer.get("count") != len(entries):
        raise BackupError(f"{p}: trailer says {trailer.get('count')} entries, file holds {len(entries)}")
    if trailer.get("sha256") != digest.hexdigest():
        raise BackupError(f"{p}: checksum mismatch, the file was changed or damaged")
    return Verified(len(entries), digest.hexdigest(), entries)


def _check_keys(queue: Queue, path: str | os.PathLike[str], entries: list[dict[str, Any]]) -> None:
    """Every entry goes to exactly one of this configuration's keys, of its own kind: a
    stream entry to a queue stream or the DLQ, a delayed entry to a queue's delayed set.
    A prefix match let a stream land on a delayed set's key (the scheduler then failed
    with WRONGTYPE on every tick) and an ensure_group on a junk queue name."""
    streams = {keys.stream(q) for q in queue.priorities}
    delayed = {keys.delayed(q) for q in queue.priorities}
    seen: set[tuple[str, str]] = set()
    for n, obj in enumerate(entries, start=2):
        key = obj["key"]
        where = f"{path}: line {n}: {obj['t']} entry for key {key[:80]!r}"
        if obj["t"] == "stream":
            if key not in streams and key != keys.DLQ:
                raise BackupError(f"{where}: not a queue stream or the DLQ of this configuration "
                                  f"({', '.join(sorted(streams | {keys.DLQ}))})")
            if key != keys.DLQ:
                try:
                    parse_entry(obj["fields"])
                except InvalidMessage as exc:
                    raise BackupError(f"{where}: {exc}") from None
            if (key, obj["id"]) in seen:
                raise BackupError(f"{where}: id {obj['id']} appears twice")
            seen.add((key, obj["id"]))
        else:
            if key not in delayed:
                raise BackupError(f"{where}: not a delayed set of this configuration "
                                  f"({', '.join(sorted(delayed))})")
            try:
                uuid.UUID(obj["member"])
            except ValueError:
                raise BackupError(f"{where}: member {obj['member'][:64]!r} is not a distribution id") from None


async def _check_types(queue: Queue, path: str | os.PathLike[str], entries: list[dict[str, Any]]) -> None:
    """Refuse before writing when a target key already holds another Redis type."""
    wanted = {o["key"]: "stream" if o["t"] == "stream" else "zset" for o in entries}
    for key, kind in sorted(wanted.items()):
        found = await queue.redis.type(key)
        found = found.decode() if isinstance(found, bytes) else str(found)
        if found not in ("none", kind):
            raise BackupError(f"{path}: Redis key {key} holds a {found}, not a {kind}: nothing restored")



async def restore(
    queue: Queue, path: str | os.PathLike[str], *, progress: Progress | None = None
) -> RestoreResult:
    """Put a verified backup back, all or nothing. Every entry is checked first (its key is
    one of this configuration's, of the entry's kind and Redis type; its fields are text;
    its distribution id is a UUID); a Redis error while writing removes what this restore
    had written. Entries keep their ids when their stream is gone; otherwise they get new
    ids (after the group's last delivered id, so they are read). An entry whose id is still
    in the stream is skipped, so restoring twice is harmless."""
    verified = verify(path)
    _check_keys(queue, path, verified.entries)
    await _check_types(queue, path, verified.entries)
    written: list[tuple[str, str]] = []  # (stream, new id) and (delayed key, member) added
    try:
        return await _write(queue, verified.entries, written, progress)
    except RedisError as exc:
        undone = await _undo(queue, written)
        raise BackupError(
            f"{path}: restore failed ({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}); "
            f"{undone} of the {len(written)} entries it had written were removed again"
        ) from None


async def _undo(queue: Queue, written: list[tuple[str, str]]) -> int:
    undone = 0
    for key, item in reversed(written):
        try:
            if key.startswith(keys.SCHEDULER_PREFIX):
                undone += int(await queue.redis.zrem(key, item))
            else:
                undone += int(await queue.redis.xdel(key, item))
        except RedisError:
            continue
    return undone


async def _write(
    queue: Queue, entries: list[dict[str, Any]], written: list[tuple[str, str]], progress: Progress | None
) -> RestoreResult:
    result = RestoreResult()
    by_key: Counter[str] = Counter()
    streams = sorted({o["key"] for o in entries if o["t"] == "stream"})
    fresh = {s: not await queue.redis.exists(s) for s in streams}
    for stream in streams:
        items = [o for o in entries if o["t"] == "stream" and o["key"] == stream]
        for start in range(0, len(items), _CHUNK):
            chunk = items[start : start + _CHUNK]
            if fresh[stream]:
                pipe = queue.redis.pipeline(transaction=False)
                for o in chunk:
                    pipe.xadd(stream, o["fields"], id=o["id"])
                replies = await pipe.execute(raise_on_error=False)
                retry = []
                for o, r in zip(chunk, replies, strict=True):
                    if isinstance(r, ResponseError):
                        retry.append(o)
                    elif isinstance(r, Exception):
                        raise r
                    else:
                        written.append((stream, str(r)))
                if retry:  # ids out of order in a hand-edited file: give them new ids
                    result.new_ids += await _append(queue, stream, retry, written)
                added = len(chunk)
            else:
                pipe = queue.redis.pipeline(transaction=False)
                for o in chunk:
                    pipe.xrange(stream, min=o["id"], max=o["id"], count=1)
                present = await pipe.execute()
                todo = [o for o, rows in zip(chunk, present, strict=True) if not rows]
                result.skipped_existing += len(chunk) - len(todo)
                result.new_ids += await _append(queue, stream, todo, written)
                added = len(todo)
            by_key[stream] += added
            result.restored += added
            if progress:
                progress(len(chunk))
        if stream != keys.DLQ:
            await queue.ensure_group(keys.queue_of(stream))
    delayed = [o for o in entries if o["t"] == "delayed"]
    for start in range(0, len(delayed), _CHUNK):
        chunk = delayed[start : start + _CHUNK]
        pipe = queue.redis.pipeline(transaction=False)
        for o in chunk:
            pipe.zadd(o["key"], {o["member"]: o["score"]}, nx=True)
        replies = await pipe.execute()
        for o, added in zip(chunk, replies, strict=True):
            if added:
                written.append((o["key"], o["member"]))
                by_key[o["key"]] += 1
                result.restored += 1
            else:
                result.skipped_existing += 1
        if progress:
            progress(len(chunk))
    result.by_key = dict(by_key)
    return result


async def _append(queue: Queue, stream: str, objs: list[dict[str, Any]], written: list[tuple[str, str]]) -> int:
    """XADD ``objs`` to ``stream`` under new ids, noting each in ``written`` (what an
    all-or-nothing restore removes again if a later write fails). Returns how many."""
    pipe = queue.redis.pipeline(transaction=False)
    for o in objs:
        pipe.xadd(stream, o["fields"])
    written.extend((stream, str(r)) for r in await pipe.execute())
    return len(objs)


async def clear_backed_up(queue: Queue, result: BackupResult) -> int:
    """Remove exactly the entries a verified backup holds (XACK + XDEL, ZREM)."""
    removed = 0
    for stream, ids in result.stream_ids.items():
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            pipe = queue.redis.pipeline(transaction=stream != keys.DLQ)
            if stream != keys.DLQ:
                pipe.xack(stream, keys.GROUP, *chunk)
            pipe.xdel(stream, *chunk)
            replies = await pipe.execute()
            removed += int(replies[-1])
    for dkey, members in result.delayed_members.items():
        for start in range(0, len(members), _CHUNK):
            removed += int(await queue.redis.zrem(dkey, *members[start : start + _CHUNK]))
    return removed
