"""Backup writes every entry and verifies it; restore gives back every entry."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from ms07 import keys
from ms07.errors import BackupError
from ms07.ops import backup
from ms07.queue import Queue, open_redis
from tests.support import acli


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[Queue]:
    client = await open_redis(redis_url)
    q = Queue(client, ["default"])
    await q.ensure_groups()
    try:
        yield q
    finally:
        await client.aclose()


async def _fill(queue: Queue, n: int) -> dict[str, dict[str, str]]:
    pipe = queue.redis.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(keys.stream("default"), {"id": str(uuid.uuid4()), "destination": f"d{i % 7}", "attempt": str(i)})
    await pipe.execute()
    return {i: f async for i, f in queue.scan(keys.stream("default"))}


async def test_backup_delete_restore_10000(queue: Queue, tmp_path: Path, env_for: dict[str, str]) -> None:
    before = await _fill(queue, 10_000)
    delayed_id = str(uuid.uuid4())
    await queue.schedule([("default", delayed_id, time.time() + 60)])
    path = tmp_path / "backup.jsonl"
    result = await acli(["queue", "backup", str(path), "--json"], env_for)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["count"] == 10_001
    await queue.redis.delete(keys.stream("default"), keys.delayed("default"))
    result = await acli(["queue", "restore", str(path), "--json"], env_for)
    assert result.exit_code == 0, result.output
    after = {i: f async for i, f in queue.scan(keys.stream("default"))}
    assert after == before  # same ids, same fields
    assert await queue.redis.zscore(keys.delayed("default"), delayed_id) is not None
    entries = await queue.read("w", 20_000, 100)  # the group was recreated and sees them all
    assert len(entries) == 10_000


async def test_restore_twice_adds_nothing(queue: Queue, tmp_path: Path) -> None:
    await _fill(queue, 20)
    path = tmp_path / "b.jsonl"
    await backup.backup(queue, path)
    result = await backup.restore(queue, path)
    assert result.restored == 0 and result.skipped_existing == 20
    assert await queue.redis.xlen(keys.stream("default")) == 20


async def test_restore_into_live_stream_gets_new_ids_after_group(queue: Queue, tmp_path: Path) -> None:
    await _fill(queue, 5)
    path = tmp_path / "b.jsonl"
    res = await backup.backup(queue, path)
    await queue.read("w", 10, 100)
    assert await backup.clear_backed_up(queue, res) == 5
    restored = await backup.restore(queue, path)
    assert restored.restored == 5 and restored.new_ids == 5
    assert len(await queue.read("w", 10, 100)) == 5  # visible to the group despite its last id


async def test_tampered_backup_is_refused_before_writing(queue: Queue, tmp_path: Path, env_for: dict[str, str]) -> None:
    await _fill(queue, 3)
    path = tmp_path / "b.jsonl"
    await backup.backup(queue, path)
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace('"attempt":"0"', '"attempt":"9"')
    path.write_text("\n".join(lines) + "\n")
    await queue.redis.delete(keys.stream("default"))
    with pytest.raises(BackupError, match="checksum"):
        await backup.restore(queue, path)
    assert await queue.redis.exists(keys.stream("default")) == 0
    result = await acli(["queue", "restore", str(path)], env_for)
    assert result.exit_code == 5
    assert "checksum mismatch" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "content, message",
    [("", "too short"), ("not json\n{}\n", "bad header"), ('{"format":"x"}\n{"t":"end"}\n', "format")],
)
def test_bad_backup_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(BackupError, match=message):
        backup.verify(path)


def test_missing_backup_file(tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="does not exist"):
        backup.verify(tmp_path / "nope.jsonl")


# ------------------------------------------------------------- crafted, checksum-valid files


def _craft(path: Path, entries: list[dict[str, object]]) -> Path:
    """A backup whose header, count and checksum are right: only its entries are wrong."""
    lines = [backup._line(e) for e in entries]
    digest = hashlib.sha256("".join(line + "\n" for line in lines).encode()).hexdigest()
    header = {"format": backup.FORMAT, "version": backup.VERSION, "created_at": "x", "queues": ["default"]}
    trailer = {"t": "end", "count": len(lines), "sha256": digest}
    path.write_text("\n".join([backup._line(header), *lines, backup._line(trailer)]) + "\n")
    return path


def _stream(key: str, n: int = 1, **fields: object) -> dict[str, object]:
    return {"t": "stream", "key": key, "id": f"{1000 + n}-0",
            "fields": fields or {"id": str(uuid.uuid4()), "destination": "d"}}


def _delayed(key: str, member: str | None = None, score: object = 1.0) -> dict[str, object]:
    return {"t": "delayed", "key": key, "member": member or str(uuid.uuid4()), "score": score}


async def _redis_keys(queue: Queue) -> list[str]:
    return sorted([k async for k in queue.redis.scan_iter("*")])


GOOD_STREAM = [_stream(keys.stream("default"), n) for n in range(3)]
CRAFTED = {
    # a stream where the scheduler's sorted set belongs (it then logged WRONGTYPE forever)
    "stream on the delayed key": ([*GOOD_STREAM, _stream(keys.delayed("default"), 9)], "not a queue stream"),
    "stream on an unconfigured queue": ([_stream(keys.stream("junk"))], "not a queue stream"),
    "stream on a key that only starts like one": ([_stream(keys.stream("default") + "x")], "not a queue stream"),
    "stream on another key": ([_stream("worker:heartbeat:w1")], "not a queue stream"),
    # a sorted set on a stream key (was: a partial restore and a WRONGTYPE traceback)
    "delayed on the stream key": ([*GOOD_STREAM, _delayed(keys.stream("default"))], "not a delayed set"),
    "delayed on the DLQ": ([_delayed(keys.DLQ)], "not a delayed set"),
    "delayed on an unconfigured queue": ([_delayed(keys.delayed("junk"))], "not a delayed set"),
    "non-string field value": ([*GOOD_STREAM, _stream(keys.stream("default"), 7, id=str(uuid.uuid4()), attempt=5)],
                               "fields must map text to text"),
    "nested field value": ([_stream(keys.DLQ, 1, reason=["a"])], "fields must map text to text"),
    "no fields": ([{**_stream(keys.DLQ), "fields": {}}], "needs fields"),
    "bad stream id": ([{**_stream(keys.DLQ), "id": "*"}], "needs an id"),
    "zero stream id": ([{**_stream(keys.DLQ), "id": "0-0"}], "needs an id"),
    "entry without a distribution id": ([_stream(keys.stream("default"), 1, destination="d")], "no 'id' field"),
    "entry with a non-UUID id": ([_stream(keys.stream("default"), 1, id="x; DROP")], "not a UUID"),
    "duplicate id": ([GOOD_STREAM[0], GOOD_STREAM[0]], "appears twice"),
    "delayed member not a distribution id": ([_delayed(keys.delayed("default"), "junk")], "not a distribution id"),
    "infinite score": ([_delayed(keys.delayed("default"), score=float("inf"))], "needs a finite score"),
    "boolean score": ([_delayed(keys.delayed("default"), score=True)], "needs a finite score"),
    "key not text": ([{**_stream(keys.DLQ), "key": 5}], "needs a key"),
}


@pytest.mark.parametrize("name", list(CRAFTED))
async def test_a_crafted_backup_is_refused_before_anything_is_written(
    queue: Queue, tmp_path: Path, name: str
) -> None:
    entries, message = CRAFTED[name]
    path = _craft(tmp_path / "crafted.jsonl", entries)
    before = await _redis_keys(queue)
    with pytest.raises(BackupError, match=message) as info:
        await backup.restore(queue, path)
    assert "\n" not in str(info.value)
    assert await _redis_keys(queue) == before  # not one key created
    assert await queue.redis.xlen(keys.stream("default")) == 0


async def test_the_cli_says_one_line_for_a_crafted_backup(
    queue: Queue, tmp_path: Path, env_for: dict[str, str]
) -> None:
    path = _craft(tmp_path / "crafted.jsonl", [*GOOD_STREAM, _delayed(keys.stream("default"))])
    result = await acli(["queue", "restore", str(path)], env_for)
    assert result.exit_code == 5, result.output
    assert "not a delayed set" in result.output and "Traceback" not in result.output
    assert await queue.redis.xlen(keys.stream("default")) == 0


async def test_a_key_of_another_type_is_refused_before_writing(queue: Queue, tmp_path: Path) -> None:
    """TYPE is checked before the first write: the delayed key already holds a stream (as the
    old restore made it), the DLQ a string."""
    await queue.redis.xadd(keys.delayed("default"), {"junk": "1"})
    path = _craft(tmp_path / "b.jsonl", [*GOOD_STREAM, _delayed(keys.delayed("default"))])
    with pytest.raises(BackupError, match=r"holds a stream, not a zset: nothing restored"):
        await backup.restore(queue, path)
    assert await queue.redis.xlen(keys.stream("default")) == 0
    await queue.redis.set(keys.DLQ, "x")
    with pytest.raises(BackupError, match="holds a string, not a stream"):
        await backup.restore(queue, _craft(tmp_path / "c.jsonl", [_stream(keys.DLQ)]))


async def test_a_redis_error_half_way_removes_what_was_written(
    queue: Queue, tmp_path: Path, redis_url: str
) -> None:
    """All or nothing: the streams are written, then the delayed set turns out unwritable
    (another client made it a string after the checks): the stream entries are removed again."""
    path = _craft(tmp_path / "b.jsonl", [*GOOD_STREAM, _delayed(keys.delayed("default"))])
    other = redis.Redis.from_url(redis_url)
    calls = []

    def progress(n: int) -> None:
        calls.append(n)
        if len(calls) == 1:  # after the stream chunk, before the delayed one
            other.set(keys.delayed("default"), "taken")

    try:
        with pytest.raises(BackupError, match=r"restore failed .*WRONGTYPE.*3 of the 3 entries"):
            await backup.restore(queue, path, progress=progress)
    finally:
        other.close()
    assert await queue.redis.xlen(keys.stream("default")) == 0
