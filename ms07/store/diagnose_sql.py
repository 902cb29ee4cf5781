"""Every SQL statement the diagnose checks run, in one place so a test can EXPLAIN each of
them (tests/diagnose/test_sql.py). The lost-jobs statements are the reconciler's own, in
``store/lost.py``, listed here for the same test.

Each one is served by an index of migrations/0001_initial.sql (noted beside it) and
bounded by the window or by a small set (processing jobs, workers), so they stay fast
at millions of rows. Parameters are named: ``since`` and ``stuck`` are seconds.
"""

from __future__ import annotations

from ms07.store import lost
from ms07.store.status import PARKED_SQL, AttemptStatus, JobStatus

_PROCESSING = f"'{JobStatus.PROCESSING}'"
_SUCCESS = f"'{AttemptStatus.SUCCESS}'"
_FAILED = f"'{AttemptStatus.FAILED}'"

# distribution_jobs_processing_created_idx: started_at >= created_at, so a job whose
# lease is older than `stuck` was also created before it, which bounds the index scan.
STUCK_JOBS = f"""
SELECT distribution_id::text, destination_name, created_at, started_at,
       EXTRACT(EPOCH FROM (now() - created_at)) AS seconds_old,
       EXTRACT(EPOCH FROM (now() - coalesce(started_at, created_at))) AS seconds_processing,
       count(*) OVER () AS total
  FROM distribution_jobs
 WHERE status = {_PROCESSING}
   AND created_at < now() - make_interval(secs => %(stuck)s)
   AND coalesce(started_at, created_at) < now() - make_interval(secs => %(stuck)s)
 ORDER BY created_at
 LIMIT 10
"""

STUCK_BY_DESTINATION = f"""
SELECT destination_name, count(*)
  FROM distribution_jobs
 WHERE status = {_PROCESSING}
   AND created_at < now() - make_interval(secs => %(stuck)s)
   AND coalesce(started_at, created_at) < now() - make_interval(secs => %(stuck)s)
 GROUP BY destination_name
 ORDER BY 2 DESC
"""

# distribution_attempts_errors_idx (error_code, started_at) WHERE error_code IS NOT NULL.
TIMEOUT_ATTEMPTS = """
SELECT destination_name, error_code, count(*) AS n, max(started_at) AS last_at
  FROM distribution_attempts
 WHERE error_code IN ('CONNECTION_TIMEOUT', 'READ_TIMEOUT')
   AND started_at >= now() - make_interval(secs => %(since)s)
 GROUP BY destination_name, error_code
 ORDER BY n DESC
"""

# distribution_attempts_started_idx. The guide's latency query (problem 2, docs/architecture.md), with percentiles.
LATENCY = f"""
SELECT destination_name,
       count(*) AS attempts,
       avg(ms) AS avg_ms,
       percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY ms) AS pct,
       max(ms) AS max_ms,
       count(*) FILTER (WHERE status = {_FAILED}) AS failures
  FROM (SELECT destination_name, status,
               EXTRACT(EPOCH FROM (completed_at - started_at)) * 1000 AS ms
          FROM distribution_attempts
         WHERE started_at >= now() - make_interval(secs => %(since)s)) AS a
 GROUP BY destination_name
"""

# distribution_attempts_started_idx: failures per destination, error code and HTTP status,
# with when each was first and last seen, its latest message and distribution (diagnose errors).
ERRORS = f"""
SELECT destination_name, coalesce(error_code, 'UNKNOWN') AS error_code, response_status_code,
       count(*) AS n, min(started_at) AS first_at, max(started_at) AS last_at,
       (array_agg(coalesce(error_message, '') ORDER BY started_at DESC))[1] AS last_message,
       (array_agg(distribution_id::text ORDER BY started_at DESC))[1] AS last_distribution_id
  FROM distribution_attempts
 WHERE status = {_FAILED}
   AND started_at >= now() - make_interval(secs => %(since)s)
 GROUP BY destination_name, error_code, response_status_code
 ORDER BY n DESC
 LIMIT 100
"""

# distribution_attempts_started_idx: attempts and successes per destination in the window,
# and when the last success was (a destination with failures and no success is down).
OUTCOMES = f"""
SELECT destination_name, count(*) AS attempts,
       count(*) FILTER (WHERE status = {_SUCCESS}) AS successes,
       max(started_at) FILTER (WHERE status = {_SUCCESS}) AS last_success_at,
       max(started_at) AS last_at
  FROM distribution_attempts
 WHERE started_at >= now() - make_interval(secs => %(since)s)
 GROUP BY destination_name
"""

# distribution_jobs_processing_created_idx: the guide's "resource usage" query (problem 2, docs/architecture.md).
ACTIVE = f"""
SELECT destination_name, count(*) AS active,
       avg(EXTRACT(EPOCH FROM (now() - created_at))) AS avg_queue_seconds
  FROM distribution_jobs
 WHERE status = {_PROCESSING}
 GROUP BY destination_name
"""

# distribution_attempts_auth_idx (started_at) WHERE response_status_code IN (401, 403).
AUTH_FAILURES = """
SELECT destination_name, response_status_code, coalesce(error_message, '') AS error_message,
       count(*) AS occurrences, max(started_at) AS last_at
  FROM distribution_attempts
 WHERE response_status_code IN (401, 403)
   AND started_at >= now() - make_interval(secs => %(since)s)
 GROUP BY destination_name, response_status_code, error_message
 ORDER BY occurrences DESC
 LIMIT 50
"""

# distribution_attempts_destination_started_idx, read backwards: one row per destination.
LAST_ATTEMPT = """
SELECT d.name, a.response_status_code, a.status, a.started_at
  FROM unnest(%(names)s::text[]) AS d(name)
  CROSS JOIN LATERAL (
        SELECT response_status_code, status, started_at
          FROM distribution_attempts
         WHERE destination_name = d.name
         ORDER BY started_at DESC
         LIMIT 1) AS a
"""

# worker_heartbeats_pkey: one row per worker ever started (stopped rows are pruned).
WORKERS = """
SELECT worker_id, host, pid, status, in_flight, rss_bytes, version, started_at, updated_at,
       EXTRACT(EPOCH FROM (now() - updated_at)) AS seconds_since_update
  FROM worker_heartbeats
 ORDER BY worker_id
"""

# worker_heartbeat_samples_time_idx. Seconds are relative to now to keep the
# regression's sums small; the slope is bytes per second.
RSS_TREND = """
SELECT worker_id,
       count(*) AS samples,
       min(sampled_at) AS first_at,
       max(sampled_at) AS last_at,
       regr_slope(rss_bytes::float8, EXTRACT(EPOCH FROM (sampled_at - now()))) AS slope,
       regr_intercept(rss_bytes::float8, EXTRACT(EPOCH FROM (sampled_at - now()))) AS intercept,
       regr_r2(rss_bytes::float8, EXTRACT(EPOCH FROM (sampled_at - now()))) AS r2,
       min(EXTRACT(EPOCH FROM (sampled_at - now()))) AS x_first,
       max(EXTRACT(EPOCH FROM (sampled_at - now()))) AS x_last,
       min(rss_bytes) AS min_rss,
       max(rss_bytes) AS max_rss
  FROM worker_heartbeat_samples
 WHERE sampled_at >= now() - make_interval(secs => %(since)s)
 GROUP BY worker_id
 ORDER BY worker_id
"""

DESTINATIONS = """
SELECT name, url, health_url, health_status, last_health_check, last_health_latency_ms,
       last_health_error, enabled, circuit_state, circuit_changed_at,
       EXTRACT(EPOCH FROM (now() - last_health_check)) AS seconds_since_check
  FROM destinations
 ORDER BY name
"""

# Retention. Sizes from the catalog: no table is read.
TABLE_SIZES = """
SELECT c.relname AS table_name, greatest(c.reltuples, 0)::bigint AS estimated_rows,
       pg_table_size(c.oid) AS table_bytes, pg_indexes_size(c.oid) AS index_bytes
  FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
 WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
   AND c.relname IN ('distribution_jobs', 'distribution_attempts', 'recovery_audit', 'worker_heartbeat_samples',
                     'replay_items', 'retention_runs')
 ORDER BY pg_total_relation_size(c.oid) DESC
"""

# The oldest row each table keeps: each the first entry of an index (created_idx,
# completed_idx, attempts started_idx, recovery_audit_at_idx, worker_heartbeat_samples_time_idx).
OLDEST_ROWS = f"""
SELECT (SELECT min(created_at) FROM distribution_jobs) AS distribution_jobs,
       (SELECT min(completed_at) FROM distribution_jobs
         WHERE completed_at IS NOT NULL AND status = '{JobStatus.DELIVERED}') AS delivered_job,
       (SELECT min(completed_at) FROM distribution_jobs
         WHERE completed_at IS NOT NULL AND status IN {PARKED_SQL}) AS parked_job,
       (SELECT min(started_at) FROM distribution_attempts) AS distribution_attempts,
       (SELECT min(at) FROM recovery_audit) AS recovery_audit,
       (SELECT min(sampled_at) FROM worker_heartbeat_samples) AS worker_heartbeat_samples
"""

# retention_runs keeps its newest 1,000 rows.
LAST_RETENTION = """
SELECT max(finished_at) FILTER (WHERE outcome = 'done' AND NOT dry_run) AS last_success,
       max(finished_at) AS last_run,
       EXTRACT(EPOCH FROM (now() - max(finished_at) FILTER (WHERE outcome = 'done' AND NOT dry_run)))
           AS seconds_since_success
  FROM retention_runs
"""

# (name, sql, params, tables whose every row it may read) for the index test and the bench.
SAMPLE_PARAMS = {"since": 3600.0, "stuck": 1800.0, "older_than": 120.0, "limit": 5000,
                 "names": ["d1", "d2"], "ids": ["00000000-0000-0000-0000-000000000000"],
                 "stamps": ["2026-01-01T00:00:00+00:00"]}
BIG_TABLE_QUERIES = {
    "stuck jobs": STUCK_JOBS,
    "stuck by destination": STUCK_BY_DESTINATION,
    "timeout attempts": TIMEOUT_ATTEMPTS,
    "latency": LATENCY,
    "active": ACTIVE,
    "auth failures": AUTH_FAILURES,
    "errors": ERRORS,
    "outcomes": OUTCOMES,
    "last attempt": LAST_ATTEMPT,
    "open jobs": lost.SCAN,
    "still open": lost.UNCHANGED,
    "rss trend": RSS_TREND,
    "oldest rows": OLDEST_ROWS,
}
# Small tables (one row per destination or worker) are read whole on purpose.
SMALL_TABLE_QUERIES = {"workers": WORKERS, "destinations": DESTINATIONS, "table sizes": TABLE_SIZES,
                       "last retention": LAST_RETENTION}
