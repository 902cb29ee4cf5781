"""Retention on real PostgreSQL and Redis: exactly the finished jobs past their age go,
with their attempts and DLQ entries; open jobs of any age stay; the archive reads back."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis as redis_sync

from ms07 import keys
from ms07.ops import retention
from ms07.store import db
from ms07.store.status import TERMINAL, JobStatus
from tests.retention.seed import ATTEMPTS_PER_JOB, attempt_jobs, expected_gone, job_ids, seed
from tests.store.test_migrations import GUIDE_QUERIES
from tests.support import acli


def _ret(settings: Any, **changes: Any) -> Any:
    return dataclasses.replace(settings.retention, **{"batch_size": 4, "batch_pause_seconds": 0, **changes})


async def _connect(url: str) -> psycopg.AsyncConnection[Any]:
    return await db.connect(url, autocommit=True)


async def test_prune_removes_exactly_the_finished_jobs_past_their_age(make_settings, database_url: str) -> None:
    settings = make_settings()
    conn = await _connect(database_url)
    try:
        made = await seed(conn)
        everything = await job_ids(conn)
        gone = expected_gone(made, 24 * 7, 24 * 30)
        assert gone and gone < everything
        plan = await retention.prune(conn, _ret(settings), dry_run=True)
        assert plan.plan["distribution_jobs"]["rows"] == len(gone)
        assert plan.plan["distribution_attempts"]["rows"] == ATTEMPTS_PER_JOB * len(gone)
        assert plan.plan["distribution_jobs"]["bytes"] > 0
        assert await job_ids(conn) == everything  # a dry run removes nothing

        run = await retention.prune(conn, _ret(settings))
        assert run.outcome == "done"
        left = await job_ids(conn)
        assert left == everything - gone
        for status in (s for s in JobStatus if s not in TERMINAL):  # open or held (paused)
            for label in ("young", "week_and_a_half", "forty_days"):
                assert set(made[(status.value, label)]) <= left  # not finished: kept whatever its age
        attempts = await attempt_jobs(conn)
        assert {i: attempts.get(i) for i in left} == {i: ATTEMPTS_PER_JOB for i in left}
        assert not set(attempts) & gone
        assert run.removed["distribution_jobs"]["rows"] == len(gone)
        assert run.removed["distribution_attempts"]["rows"] == ATTEMPTS_PER_JOB * len(gone)
        for sql in GUIDE_QUERIES.values():  # the guide's queries still run
            await (await conn.execute(sql)).fetchall()
        await conn.rollback()
        last = await retention.store.last_run(conn, succeeded=True)
        assert last is not None and last["removed"]["distribution_jobs"]["rows"] == len(gone)
        again = await retention.prune(conn, _ret(settings))
        assert again.removed["distribution_jobs"]["rows"] == 0
    finally:
        await conn.close()


async def test_attempt_and_payload_ages(make_settings, database_url: str) -> None:
    settings = make_settings()
    conn = await _connect(database_url)
    try:
        made = await seed(conn)
        # Jobs kept forever; attempts of finished jobs older than 2 days and payloads of
        # finished jobs older than 2 days go.
        ret = _ret(settings, delivered_days=None, dead_days=0, attempts_days=2, payload_days=2)
        run = await retention.prune(conn, ret)
        old_finished = {i for (status, label), ids in made.items() for i in ids
                        if label != "young" and status in ("delivered", "failed", "dead")}
        assert run.removed["distribution_jobs"]["rows"] == 0
        assert run.removed["distribution_attempts"]["rows"] == ATTEMPTS_PER_JOB * len(old_finished)
        assert run.removed["payloads"]["rows"] == len(old_finished)
        attempts = await attempt_jobs(conn)
        assert not set(attempts) & old_finished
        cur = await conn.execute("SELECT distribution_id::text, octet_length(payload), payload_expunged_at IS NOT NULL"
                                 " FROM distribution_jobs")
        rows = {r[0]: (r[1], r[2]) for r in await cur.fetchall()}
        assert {i for i, (n, gone) in rows.items() if gone} == old_finished
        assert all(rows[i][0] == 0 for i in old_finished)
        assert all(n > 0 for i, (n, gone) in rows.items() if i not in old_finished)
        for status in ("queued", "retrying", "processing"):  # open: attempts and payloads kept
            for i in made[(status, "forty_days")]:
                assert attempts[i] == ATTEMPTS_PER_JOB and rows[i][0] > 0
    finally:
        await conn.close()


async def test_dlq_entries_of_removed_jobs_go(make_settings, database_url: str, redis_url: str) -> None:
    settings = make_settings()
    conn = await _connect(database_url)
    rc = redis_sync.Redis.from_url(redis_url, decode_responses=True)
    try:
        made = await seed(conn, per_cell=1)
        old_ms = int((time.time() - 40 * 86400) * 1000)
        removed_dead = made[("dead", "forty_days")][0]
        kept_dead = made[("dead", "week_and_a_half")][0]
        rc.xadd(keys.DLQ, {"distribution_id": removed_dead, "reason": "max_retries_exceeded"}, id=f"{old_ms}-0")
        rc.xadd(keys.DLQ, {"distribution_id": "not-a-job", "reason": "invalid"}, id=f"{old_ms}-1")
        rc.xadd(keys.DLQ, {"distribution_id": kept_dead, "reason": "max_retries_exceeded"},
                id=f"{old_ms - 10 * 86400_000 + 30 * 86400_000}-0")
        young_orphan = str(uuid.uuid4())
        rc.xadd(keys.DLQ, {"distribution_id": young_orphan, "reason": "poison"})
        from ms07.queue import open_redis

        redis = await open_redis(redis_url)
        try:
            dry = await retention.prune(conn, _ret(settings), redis=redis, dry_run=True)
            assert dry.plan["dlq_entries"]["rows"] == 2
            run = await retention.prune(conn, _ret(settings), redis=redis)
        finally:
            await redis.aclose()
        assert run.removed["dlq_entries"]["rows"] == 2
        left = [f["distribution_id"] for _, f in rc.xrange(keys.DLQ)]
        assert left == [kept_dead, young_orphan]
    finally:
        rc.close()
        await conn.close()


async def test_archive_is_written_read_back_and_counted(make_settings, database_url: str, tmp_path: Path) -> None:
    settings = make_settings()
    conn = await _connect(database_url)
    try:
        made = await seed(conn)
        gone = expected_gone(made, 24 * 7, 24 * 30)
        run = await retention.prune(conn, _ret(settings), archive_dir=tmp_path)
        assert run.archive is not None
        assert (run.archive["jobs"], run.archive["attempts"]) == (len(gone), ATTEMPTS_PER_JOB * len(gone))
        names, parts, rows = _read_archive(tmp_path)
        assert names == sorted(run.archive["files"]) and not parts
        assert {r["distribution_id"] for r in rows} == gone
        assert sum(len(r["attempts"]) for r in rows) == ATTEMPTS_PER_JOB * len(gone)
        assert all(json.loads(base64.b64decode(r["payload"]))["n"] >= 1 for r in rows)
    finally:
        await conn.close()


def _read_archive(path: Path) -> tuple[list[str], list[Path], list[dict[str, Any]]]:
    files = sorted(path.glob("*.jsonl.gz"))
    rows = []
    for f in files:
        with gzip.open(f, "rt", encoding="utf-8") as lines:
            rows += [json.loads(line) for line in lines]
    return [f.name for f in files], list(path.glob("*.part")), rows


async def test_a_job_replayed_while_prune_runs_is_kept(make_settings, database_url: str) -> None:
    settings = make_settings()
    conn = await _connect(database_url)
    other = await _connect(database_url)
    try:
        made = await seed(conn, per_cell=1)
        replayed = made[("dead", "forty_days")][0]
        # A replay holds the row (not yet committed) when retention reaches it.
        await other.execute("UPDATE distribution_jobs SET status = %s, completed_at = NULL"
                            " WHERE distribution_id = %s", (JobStatus.QUEUED.value, replayed))
        run = await retention.prune(conn, _ret(settings))
        await other.commit()
        assert replayed in await job_ids(conn)
        assert (await attempt_jobs(conn))[replayed] == ATTEMPTS_PER_JOB
        assert run.removed["distribution_jobs"]["rows"] == len(expected_gone(made, 24 * 7, 24 * 30)) - 1
    finally:
        await other.close()
        await conn.close()


async def test_one_run_at_a_time(make_settings, database_url: str) -> None:
    settings = make_settings()
    conn = await _connect(database_url)
    holder = await _connect(database_url)
    try:
        await seed(conn, per_cell=1)
        await holder.execute("SELECT pg_advisory_lock(%s)", (retention.LOCK,))
        before = await job_ids(conn)
        with pytest.raises(retention.Busy, match="another retention run is in progress"):
            await retention.prune(conn, _ret(settings))
        assert await job_ids(conn) == before
    finally:
        await holder.close()
        await conn.close()


# ---------------------------------------------------------------------- the CLI


async def test_cli_dry_run_prints_the_plan_and_removes_nothing(env_for: dict[str, str], database_url: str) -> None:
    conn = await _connect(database_url)
    try:
        made = await seed(conn, per_cell=1)
        gone = expected_gone(made, 24 * 7, 24 * 30)
        before = await job_ids(conn)
        result = await acli(["db", "prune", "--dry-run", "--json"], env_for)
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["dry_run"] is True and data["removed"] is None
        assert data["plan"]["distribution_jobs"]["rows"] == len(gone)
        assert data["policy"] == {"delivered_days": 7.0, "dead_days": 30.0, "attempts_days": None,
                                  "payload_days": None}
        text = await acli(["db", "prune", "--dry-run"], env_for)
        assert "would remove" in text.stdout and "distribution_jobs" in text.stdout
        assert await job_ids(conn) == before
        done = await acli(["db", "prune"], env_for)
        assert done.exit_code == 0, done.output
        assert done.stdout.index("removing") < done.stdout.index("removed")
        assert await job_ids(conn) == before - gone
    finally:
        await conn.close()


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--archive", "{tmp}/missing"], {}, "--archive: {tmp}/missing is not a directory"),
    (["--archive", "{tmp}/file"], {}, "--archive: {tmp}/file is not a directory"),
    ([], {"MS07_RETENTION__DELIVERED_DAYS": "-1"}, "retention.delivered_days: must be 0 or more days"),
])
async def test_cli_bad_input_is_one_line_and_removes_nothing(env_for: dict[str, str], database_url: str,
                                                             tmp_path: Path, args: list[str], env: dict[str, str],
                                                             message: str) -> None:
    (tmp_path / "file").write_text("x")
    conn = await _connect(database_url)
    try:
        await seed(conn, per_cell=1)
        before = await job_ids(conn)
        result = await acli(["db", "prune", *[a.format(tmp=tmp_path) for a in args]], {**env_for, **env})
        assert result.exit_code == 2, result.output
        assert message.format(tmp=tmp_path) in result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
        assert await job_ids(conn) == before
    finally:
        await conn.close()


async def test_cli_unwritable_archive_dir(env_for: dict[str, str], database_url: str) -> None:
    conn = await _connect(database_url)
    try:
        await seed(conn, per_cell=1)
        before = await job_ids(conn)
        result = await acli(["db", "prune", "--archive", "/proc"], env_for)  # not writable, even for root
        assert result.exit_code == 2, result.output
        assert "--archive: cannot write in /proc" in result.output
        assert len(result.output.strip().splitlines()) == 1
        assert await job_ids(conn) == before
    finally:
        await conn.close()


async def test_a_batch_that_waits_past_its_lock_timeout_ends_partial(make_settings, database_url: str) -> None:
    settings = make_settings()
    conn = await _connect(database_url)
    holder = await db.connect(database_url)
    try:
        made = await seed(conn, per_cell=1)
        victim = made[("delivered", "forty_days")][0]
        # Someone holds an attempt row of a job retention wants (a long report, a migration).
        await holder.execute("SELECT id FROM distribution_attempts WHERE distribution_id = %s FOR UPDATE", (victim,))
        t0 = time.monotonic()
        run = await retention.prune(conn, _ret(settings, lock_timeout_ms=200, batch_size=100))
        assert time.monotonic() - t0 < 10
        assert run.outcome == "partial" and "LockNotAvailable" in (run.note or "")
        assert victim in await job_ids(conn)  # the whole batch rolled back
        assert (await attempt_jobs(conn))[victim] == ATTEMPTS_PER_JOB
        await holder.rollback()
        again = await retention.prune(conn, _ret(settings))
        assert again.outcome == "done" and victim not in await job_ids(conn)
    finally:
        await holder.close()
        await conn.close()
