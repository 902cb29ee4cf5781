-- ms07: no-transaction
-- Issue 19: the search's combined filters at 10 million jobs (bench/search_scale.py,
-- docs/benchmarks/README.md "Search at 10 million jobs"). Without these, a destination
-- with one status, a destination with an error code, or a destination with a window of
-- finished times was answered by ANDing two bitmaps and sorting every match: 250-600 ms
-- at p99 for a big destination. Each index below reads such a page off in order.
-- Built concurrently (see 0006): writes go on while they build.
--
-- destination + status (the replay's filter; several statuses are read one branch each,
-- ms07/store/search.py), and the cursor's next page.
CREATE INDEX CONCURRENTLY IF NOT EXISTS distribution_jobs_destination_status_created_idx
    ON distribution_jobs (destination_name, status, created_at, distribution_id);
-- destination + since/until on the finished time (on=finished).
CREATE INDEX CONCURRENTLY IF NOT EXISTS distribution_jobs_destination_completed_idx
    ON distribution_jobs (destination_name, completed_at, distribution_id) WHERE completed_at IS NOT NULL;
-- destination + error code.
CREATE INDEX CONCURRENTLY IF NOT EXISTS distribution_jobs_destination_error_created_idx
    ON distribution_jobs (destination_name, last_error_code, created_at, distribution_id)
    WHERE last_error_code IS NOT NULL;
