-- ms07: no-transaction
-- Resume releases the held (paused) jobs of one destination oldest first, a chunk at a
-- time (ms07/engine/live.py). Built CONCURRENTLY (see 0006): writes go on meanwhile.
CREATE INDEX CONCURRENTLY IF NOT EXISTS distribution_jobs_paused_idx
    ON distribution_jobs (destination_name, created_at) WHERE status = 'paused';
