-- ms07: no-transaction
-- Issue 19: the search's indexes (GET /api/v1/distributions, ms07 jobs list, ms07 replay),
-- built CONCURRENTLY: on an installation with millions of jobs the build takes minutes,
-- and writes (submits, outcomes) go on meanwhile. The runner (ms07/store/db.py) runs each
-- statement on its own, outside a transaction; an index an interrupted build left INVALID
-- is dropped and built again when the migration runs again.
--
-- Every search filter reaches its rows through an index, newest first (ORDER BY
-- created_at DESC, distribution_id DESC, or completed_at for on=finished: the keyset of
-- the cursor), so a page costs the same at 10 million jobs as at ten. correlation_id and
-- idempotency_key already have one (0001).
CREATE INDEX CONCURRENTLY IF NOT EXISTS distribution_jobs_created_idx
    ON distribution_jobs (created_at, distribution_id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS distribution_jobs_destination_created_idx
    ON distribution_jobs (destination_name, created_at, distribution_id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS distribution_jobs_status_created_idx
    ON distribution_jobs (status, created_at, distribution_id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS distribution_jobs_error_created_idx
    ON distribution_jobs (last_error_code, created_at) WHERE last_error_code IS NOT NULL;
-- since/until on the finished time (on=finished), newest finished first (parked_idx
-- covers failed/dead only).
CREATE INDEX CONCURRENTLY IF NOT EXISTS distribution_jobs_completed_idx
    ON distribution_jobs (completed_at, distribution_id) WHERE completed_at IS NOT NULL;
