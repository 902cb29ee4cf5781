"""``recover reclaim-pending`` against real Redis: dead consumers lose nothing."""

from __future__ import annotations

from typing import Any

import redis as redis_sync

from ms07 import keys
from tests.recover.conftest import audit_rows, seed

STREAM = keys.stream("default")


def _consumers(rc: redis_sync.Redis) -> dict[str, int]:
    return {c["name"]: c["pending"] for c in rc.xinfo_consumers(STREAM, keys.GROUP)}


def test_requeues_everything_a_dead_consumer_held_and_removes_it(
    cli: Any, rc: redis_sync.Redis, database_url: str
) -> None:
    ids = seed(rc, 8, pending_for="ms07-distributor-x-p1-1-dead00", pending=5)
    held = [p["message_id"] for p in rc.xpending_range(STREAM, keys.GROUP, "-", "+", 10)]
    rc.xdel(STREAM, held[0])  # deleted while pending: its payload is gone (redis#6199)
    idle_empty = "ms07-distributor-x-p2-1-dead01"
    rc.xgroup_createconsumer(STREAM, keys.GROUP, idle_empty)  # a consumer that holds nothing

    result = cli("recover", "reclaim-pending", "--yes", "--min-idle-ms", "0")
    assert result.exit_code == 0, result.output

    assert rc.xpending(STREAM, keys.GROUP)["pending"] == 0
    assert _consumers(rc) == {}, "dead consumers, and the plan's own holder, are removed"
    remaining = sorted(f["id"] for _, f in rc.xrange(STREAM))
    # 4 requeued copies + 3 never read; only the entry XDEL'd while pending is gone.
    lost = next(d for d in ids if d not in remaining)
    assert remaining == sorted(d for d in ids if d != lost)
    assert "1 had no payload left" in result.output
    rows = [
        r for r in audit_rows(database_url) if r["step_index"] == 2 and r["outcome"] != "running"
    ]
    assert rows[0]["outcome"] == "warning"
    assert rows[0]["detail"]["requeued"] == 4 and rows[0]["detail"]["vanished"] == 1


def test_gives_entries_to_a_live_consumer_and_keeps_its_own(cli: Any, rc: redis_sync.Redis) -> None:
    seed(rc, 6, pending_for="dead-worker", pending=3)
    rc.xreadgroup(keys.GROUP, "live-worker", {STREAM: ">"}, count=2)
    rc.set(keys.heartbeat("live-worker"), "{}")

    result = cli("recover", "reclaim-pending", "--yes", "--min-idle-ms", "0")
    assert result.exit_code == 0, result.output

    assert _consumers(rc) == {"live-worker": 5}
    assert rc.xlen(STREAM) == 6, "nothing copied: the entries changed owner"
    # Their idle time is set to claim_idle_seconds so the engine's reclaimer takes them at once.
    idle = sorted(
        p["time_since_delivered"] for p in rc.xpending_range(STREAM, keys.GROUP, "-", "+", 10)
    )
    assert idle[-1] >= 90_000 and idle[0] < 90_000


def test_dry_run_lists_dead_consumers_and_touches_nothing(cli: Any, rc: redis_sync.Redis) -> None:
    seed(rc, 4, pending_for="dead-worker", pending=4)
    before = rc.xpending_range(STREAM, keys.GROUP, "-", "+", 10)
    result = cli("recover", "reclaim-pending", "--dry-run", "--min-idle-ms", "0")
    assert result.exit_code == 0, result.output
    assert "1 consumer(s) without a heartbeat hold 4 pending entries" in " ".join(
        result.output.split()
    )
    assert [p["message_id"] for p in rc.xpending_range(STREAM, keys.GROUP, "-", "+", 10)] == [
        p["message_id"] for p in before
    ]
    assert _consumers(rc) == {"dead-worker": 4}


def test_a_recently_active_consumer_is_not_dead(cli: Any, rc: redis_sync.Redis) -> None:
    seed(rc, 3, pending_for="just-started", pending=3)
    result = cli("recover", "reclaim-pending", "--yes", "--min-idle-ms", "60000")
    assert result.exit_code == 0, result.output
    assert _consumers(rc) == {"just-started": 3}


def test_priority_streams_that_do_not_exist_are_fine(
    cli: Any, rc: redis_sync.Redis, tmp_path: Any
) -> None:
    config = tmp_path / "priorities.yaml"
    config.write_text("distribution: {priorities: [high, default], default_priority: default}\n")
    seed(rc, 3, pending_for="dead-worker", pending=3)  # only the default stream exists
    result = cli(
        "recover",
        "reclaim-pending",
        "--yes",
        "--min-idle-ms",
        "0",
        env={"MS07_CONFIG": str(config)},
    )
    assert result.exit_code == 0, result.output
    assert "redis-cli XINFO CONSUMERS distribution:queue:{high} workers" in result.output
    assert rc.xpending(STREAM, keys.GROUP)["pending"] == 0
    assert _consumers(rc) == {}
