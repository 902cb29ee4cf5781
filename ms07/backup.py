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
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.exceptions import ResponseError

from ms07 import keys
from ms07.errors import BackupError
from ms07.queue import Queue

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
        if obj["t"] == "stream" and not (
            isinstance(obj.get("key"), str) and isinstance(obj.get("id"), str) and isinstance(obj.get("fields"), dict)
        ):
            raise BackupError(f"{path}: line {n}: stream entry needs key, id and fields")
        if obj["t"] == "delayed" and not (
            isinstance(obj.get("key"), str) and isinstance(obj.get("member"), str)
            and isinstance(obj.get("score"), int | float)
        ):
            raise BackupError(f"{path}: line {n}: delayed entry needs key, member and score")
        entries.append(obj)
    return header, entries, trailer


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


def _allowed_key(key: str) -> bool:
    return key.startswith((keys.STREAM_PREFIX, keys.SCHEDULER_PREFIX)) or key == keys.DLQ


async def restore(
    queue: Queue, path: str | os.PathLike[str], *, progress: Progress | None = None
) -> RestoreResult:
    """Put a verified backup back. Entries keep their ids when their stream is gone;
    otherwise they get new ids (after the group's last delivered id, so they are read).
    An entry whose id is still in the stream is skipped, so restoring twice is harmless."""
    verified = verify(path)
    for obj in verified.entries:
        if not _allowed_key(obj["key"]):
            raise BackupError(f"{path}: refuses to write key {obj['key']!r}, not an ms07 queue key")
    result = RestoreResult()
    by_key: Counter[str] = Counter()
    streams = sorted({o["key"] for o in verified.entries if o["t"] == "stream"})
    fresh = {s: not await queue.redis.exists(s) for s in streams}
    for stream in streams:
        items = [o for o in verified.entries if o["t"] == "stream" and o["key"] == stream]
        for start in range(0, len(items), _CHUNK):
            chunk = items[start : start + _CHUNK]
            if fresh[stream]:
                pipe = queue.redis.pipeline(transaction=False)
                for o in chunk:
                    pipe.xadd(stream, o["fields"], id=o["id"])
                replies = await pipe.execute(raise_on_error=False)
                retry = [o for o, r in zip(chunk, replies, strict=True) if isinstance(r, ResponseError)]
                if retry:  # ids out of order in a hand-edited file: give them new ids
                    pipe = queue.redis.pipeline(transaction=False)
                    for o in retry:
                        pipe.xadd(stream, o["fields"])
                    await pipe.execute()
                    result.new_ids += len(retry)
                added = len(chunk)
            else:
                pipe = queue.redis.pipeline(transaction=False)
                for o in chunk:
                    pipe.xrange(stream, min=o["id"], max=o["id"], count=1)
                present = await pipe.execute()
                todo = [o for o, rows in zip(chunk, present, strict=True) if not rows]
                result.skipped_existing += len(chunk) - len(todo)
                pipe = queue.redis.pipeline(transaction=False)
                for o in todo:
                    pipe.xadd(stream, o["fields"])
                await pipe.execute()
                result.new_ids += len(todo)
                added = len(todo)
            by_key[stream] += added
            result.restored += added
            if progress:
                progress(len(chunk))
        if stream != keys.DLQ:
            await queue.ensure_group(keys.queue_of(stream))
    delayed = [o for o in verified.entries if o["t"] == "delayed"]
    for start in range(0, len(delayed), _CHUNK):
        chunk = delayed[start : start + _CHUNK]
        pipe = queue.redis.pipeline(transaction=False)
        for o in chunk:
            pipe.zadd(o["key"], {o["member"]: o["score"]}, nx=True)
        replies = await pipe.execute()
        for o, added in zip(chunk, replies, strict=True):
            if added:
                by_key[o["key"]] += 1
                result.restored += 1
            else:
                result.skipped_existing += 1
        if progress:
            progress(len(chunk))
    result.by_key = dict(by_key)
    return result


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
