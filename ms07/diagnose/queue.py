"""``diagnose queue`` (guide, problem 4): messages that are lost or not processed.

XLEN of every queue stream, the DLQ and the delayed sets (with overdue retries); the
consumer group and its pending entries per consumer; consumers holding entries with
no live heartbeat (dead consumers); stale workers; open jobs Postgres holds that no
stream or delayed set holds ("lost messages"); and the Redis settings that lose
messages: any evicting ``maxmemory-policy`` is CRITICAL (docs/architecture.md, problem 4: the guide's ``allkeys-lru``
evicts stream keys), no AOF is a WARNING.
"""

from __future__ import annotations

from dataclasses import asdict

from ms07 import keys, reconcile
from ms07.diagnose import retention
from ms07.diagnose.common import rows
from ms07.diagnose.context import Context, part
from ms07.diagnose.model import NOTHING_DELIVERS, CheckResult, fmt_duration, listing, plural
from ms07.diagnose.workers import GONE_AFTER, judge, live_workers
from ms07.store import diagnose_sql as sql

LOST_SCAN_LIMIT = 5000


async def check(ctx: Context) -> CheckResult:
    """Run the queue check; see the module docstring."""
    r = CheckResult("queue")
    o = ctx.options
    d = ctx.settings.distribution
    claim_ms = d.claim_idle_seconds * 1000

    async def streams() -> None:
        queue = await ctx.queue()
        stats = await queue.stats(overdue_grace_seconds=60.0)
        liveness = await live_workers(ctx)
        live = liveness.live
        r.details.update({"queue": stats, "live_workers": sorted(live), "dead_heartbeats": liveness.dead_keys})
        table = r.section("streams", ["queue", "stream", "XLEN", "pending", "consumers", "delayed", "overdue",
                                      "oldest pending idle"])
        consumers = r.section("consumers (XPENDING per consumer)",
                              ["queue", "consumer", "pending", "idle", "heartbeat"])
        dead, no_group, overdue = [], [], 0
        max_dead_idle = 0
        for name, q in stats["queues"].items():
            idle = q.get("oldest_pending_idle_ms")
            table.rows.append([name, q["stream"], str(q["length"]), str(q["pending"]), str(len(q["consumers"])),
                               str(q["delayed"]), str(q["delayed_overdue"]),
                               fmt_duration(idle / 1000) if idle is not None else "-"])
            overdue += q["delayed_overdue"]
            if q["group"] is None:
                no_group.append(q["stream"])
            for c in q["consumers"]:
                alive = c["name"] in live
                consumers.rows.append([name, c["name"], str(c["pending"]), fmt_duration(c["idle_ms"] / 1000),
                                       "live" if alive else liveness.dead_keys.get(c["name"], "none")])
                if c["pending"] > 0 and not alive:
                    dead.append(f"{c['name']} holds {c['pending']} in {name} "
                                f"(idle {fmt_duration(c['idle_ms'] / 1000)})")
                    max_dead_idle = max(max_dead_idle, c["idle_ms"])
        backlog = stats["total_length"] + stats["total_delayed"]
        r.add("depth", "info",
              f"{stats['total_length']} stream entries, {stats['total_pending']} pending, "
              f"{stats['total_delayed']} delayed, DLQ {stats['dlq']}",
              f"{len(live)} live worker heartbeat(s): {listing(sorted(live), 5) or 'none'}")
        if dead:
            critical = not live or max_dead_idle > 2 * claim_ms
            # With no live worker the headline is no_live_workers; this one is its detail.
            r.add("dead_consumers", "critical" if critical else "warning",
                  f"{len(dead)} consumer(s) without a heartbeat hold pending entries",
                  "; ".join(dead) + ("; no live worker will reclaim them" if not live else
                                     f"; live workers reclaim after {d.claim_idle_seconds:g}s idle"),
                  "take their entries over (XAUTOCLAIM) so live workers deliver them",
                  "ms07 recover reclaim-pending")
        if backlog and not live:
            r.add("no_live_workers", "critical", f"{backlog} distribution(s) wait and no worker is alive",
                  f"no {keys.HEARTBEAT_PATTERN} key in Redis (heartbeat TTL "
                  f"{ctx.settings.service.heartbeat_ttl_seconds}s)",
                  "start or restart the engine (ms07 run / the deployment); find out why it died",
                  "ms07 recover worker-crash --dry-run", impact=NOTHING_DELIVERS)
        if no_group:
            r.add("group_missing", "warning", f"no consumer group '{keys.GROUP}' on {listing(no_group)}",
                  "reads fail with NOGROUP until an engine starts and creates it (after a Redis restart "
                  "without persistence the group is gone)", "start the engine; it recreates the group",
                  "ms07 diagnose health")
        if overdue:
            r.add("delayed_overdue", "warning",
                  f"{plural(overdue, 'delayed retry', 'delayed retries')} overdue by more than 60s",
                  "the retry scheduler runs inside every engine: none is moving due retries",
                  "start or restart the engine", "ms07 diagnose health")
        if stats["dlq"]:
            r.add("dlq", "warning", f"{plural(stats['dlq'], 'entry', 'entries')} in the dead-letter queue {keys.DLQ}",
                  "parked after permanent failures, exhausted retries or as poison",
                  "read the reasons, fix the cause, then `ms07 dlq replay --all` (or replay by id)",
                  "ms07 dlq list")

    async def settings() -> None:
        redis = (await ctx.queue()).redis
        conf: dict[str, str] = {}
        for key in ("maxmemory-policy", "maxmemory", "appendonly", "appendfsync", "tcp-keepalive", "timeout"):
            conf.update({str(k): str(v) for k, v in (await redis.config_get(key)).items()})
        r.details["redis_config"] = conf
        policy = conf.get("maxmemory-policy", "?")
        evidence = ", ".join(f"{k} {v}" for k, v in conf.items())
        if policy != "noeviction":
            r.add("maxmemory_policy", "critical", f"Redis maxmemory-policy is {policy}: it can evict queue keys",
                  evidence,
                  "an evicting policy (the guide's allkeys-lru) silently deletes stream keys, i.e. "
                  "distributions: `CONFIG SET maxmemory-policy noeviction` and persist it in redis.conf; "
                  "then re-enqueue what Postgres holds and Redis lost",
                  "ms07 recover requeue-from-db --dry-run")
        if conf.get("appendonly") != "yes":
            r.add("aof_off", "warning", "Redis persistence (AOF) is off: a restart loses the queue",
                  evidence, "set appendonly yes and appendfsync everysec; meanwhile keep a verified backup",
                  "ms07 queue backup queue-backup.jsonl")
        r.add("redis_settings", "info", f"Redis: maxmemory-policy {policy}, appendonly {conf.get('appendonly')}, "
              f"tcp-keepalive {conf.get('tcp-keepalive')}, timeout {conf.get('timeout')}", evidence)

    async def workers() -> None:
        async with ctx.connection() as conn:
            found = await rows(conn, sql.WORKERS)
        queue_stats = r.details.get("queue")
        pending: dict[str, int] | None = None
        if queue_stats is not None:
            pending = {}
            for q in queue_stats["queues"].values():
                for c in q["consumers"]:
                    pending[c["name"]] = pending.get(c["name"], 0) + int(c["pending"])
        v = judge(found, pending, o.stale_worker_seconds, max(GONE_AFTER, o.since_seconds))
        r.details["workers"] = found
        if v.stale:
            r.add("stale_workers", "warning",
                  f"{len(v.stale)} worker(s) stopped beating more than {fmt_duration(o.stale_worker_seconds)} ago "
                  "without saying goodbye, and nothing took their place", listing(v.stale, 5),
                  "they crashed or hang: look at the process or pod, its restarts and its last logs",
                  "ms07 recover worker-crash --dry-run")
        if v.crashed:
            r.add("crashed_workers", "info", f"{len(v.crashed)} worker(s) crashed earlier; their work went on",
                  listing(v.crashed, 5),
                  "read why in their logs; once seen, drop them from this report",
                  f"ms07 workers forget {' '.join(v.crashed_ids[:5])}")
        if v.gone:
            r.add("gone_workers", "info", f"{len(v.gone)} worker(s) silent for more than a day", listing(v.gone, 5))

    async def lost() -> None:
        # The reconciler's own finding (ms07/reconcile.py), read only.
        scan = await reconcile.find_lost(ctx.connection, ctx.queue, o.lost_grace_seconds, LOST_SCAN_LIMIT)
        if not scan.scanned:
            r.add("lost_messages", "info", "every open job older than "
                  f"{fmt_duration(o.lost_grace_seconds)} is in a stream or the delayed set")
            return
        missing = {j.distribution_id: asdict(j) for j in scan.lost}
        r.details["lost"] = list(missing.values())
        if not missing:
            r.add("lost_messages", "info", f"all {scan.scanned} open job(s) older than "
                  f"{fmt_duration(o.lost_grace_seconds)} are held by Redis")
            return
        heal_after = d.reconcile_after_seconds + d.reconcile_interval_seconds
        oldest = max(float(v["seconds_idle"]) for v in missing.values())
        ids = [f"{k} ({v['destination_name']}, {v['status']}, {fmt_duration(v['seconds_idle'])})"
               for k, v in sorted(missing.items(), key=lambda kv: -float(kv[1]["seconds_idle"]))]
        more = f" (at least: the scan stops at the oldest {LOST_SCAN_LIMIT} open jobs)" if scan.truncated else ""
        r.add("lost_messages", "critical" if oldest > heal_after else "warning",
              f"{len(missing)} open job(s) in Postgres are in no stream or delayed set{more}",
              f"ids: {listing(ids, 10)}"
              + (f"; older than the reconciler's {fmt_duration(heal_after)}: it is not running or failing"
                 if oldest > heal_after else "; the engine's reconciler re-enqueues them after "
                 f"{fmt_duration(heal_after)}"),
              "Postgres is the system of record: re-enqueue them from it", "ms07 recover requeue-from-db")

    async def paused() -> None:
        # Destinations paused at runtime: their jobs wait, on purpose or not.
        from ms07.store import destinations as dest_store

        async with ctx.connection() as conn:
            found = await dest_store.paused_with_held(conn)
        r.details["paused_destinations"] = found
        for p in found:
            since = f" since {p['paused_at']:%Y-%m-%d %H:%M:%S %Z}" if p["paused_at"] else ""
            auto = (p["paused_reason"] or "").startswith("auto-paused")
            # Paused by itself: nobody decided it, so it is an alert (diagnose --notify).
            r.add("auto_paused_destination" if auto else "paused_destination", "critical" if auto else "warning",
                  f"destination {p['name']} is {'auto-' if auto else ''}paused{since}: "
                  f"{plural(int(p['held']), 'delivery', 'deliveries')} held",
                  f"reason: {p['paused_reason'] or 'none given'}; new submissions are accepted and held, "
                  "nothing is sent to it",
                  "resume it once the destination is ready; what is held is then delivered at a bounded rate",
                  f"ms07 destinations resume {p['name']} --yes", subject=p["name"])

    await part(r, "streams and consumers", streams)
    await part(r, "redis settings", settings)
    await part(r, "stale workers", workers)
    await part(r, "lost messages", lost)
    await part(r, "retention", lambda: retention.part(ctx, r))
    await part(r, "paused destinations", paused)
    return r

