"""Backup writes every entry and verifies it; restore gives back every entry."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ms07 import backup, keys
from ms07.errors import BackupError
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
    await queue.schedule([("default", "delayed-1", time.time() + 60)])
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
    assert await queue.redis.zscore(keys.delayed("default"), "delayed-1") is not None
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
