-- Issue 19: search the history (GET /api/v1/distributions, ms07 jobs list) and replay by
-- filter (ms07 replay, POST /api/v1/replays).
--
-- Every search filter reaches its rows through an index, newest first (ORDER BY
-- created_at DESC, distribution_id DESC, or completed_at for on=finished: the keyset of
-- the cursor), so a page costs the same at 10 million jobs as at ten. correlation_id and
-- idempotency_key already have one. Built in the migration's transaction: on a big table
-- that holds writes back while they build (minutes at 10 million rows); build them first
-- with CREATE INDEX CONCURRENTLY under the same names and the migration finds them
-- (IF NOT EXISTS).
CREATE INDEX IF NOT EXISTS distribution_jobs_created_idx
    ON distribution_jobs (created_at, distribution_id);
CREATE INDEX IF NOT EXISTS distribution_jobs_destination_created_idx
    ON distribution_jobs (destination_name, created_at, distribution_id);
CREATE INDEX IF NOT EXISTS distribution_jobs_status_created_idx
    ON distribution_jobs (status, created_at, distribution_id);
CREATE INDEX IF NOT EXISTS distribution_jobs_error_created_idx
    ON distribution_jobs (last_error_code, created_at) WHERE last_error_code IS NOT NULL;
-- since/until on the finished time (on=finished), newest finished first (parked_idx
-- covers failed/dead only).
CREATE INDEX IF NOT EXISTS distribution_jobs_completed_idx
    ON distribution_jobs (completed_at, distribution_id) WHERE completed_at IS NOT NULL;

-- A replay: its filter, who asked, and its progress. The selection is frozen when it is
-- planned (replay_items), so a resumed replay never picks a job twice.
CREATE TABLE replays (
    id          text PRIMARY KEY,
    filter      jsonb NOT NULL,
    filter_key  text NOT NULL,
    operator    text NOT NULL,
    matched     integer NOT NULL,
    enqueued    integer NOT NULL DEFAULT 0,
    skipped     integer NOT NULL DEFAULT 0,
    status      text NOT NULL DEFAULT 'running'
                CHECK (status IN ('running', 'interrupted', 'cancelled', 'done')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- "Run the same command again" finds the unfinished replay of that filter.
CREATE INDEX replays_filter_key_idx ON replays (filter_key, created_at) WHERE status IN ('running', 'interrupted');

-- One row per selected job; ``state`` leaves 'pending' in the same transaction that makes
-- the job open again: 'enqueued', or 'skipped' when the job was no longer what the filter
-- picked (replayed by someone else, purged).
CREATE TABLE replay_items (
    replay_id       text NOT NULL REFERENCES replays (id) ON DELETE CASCADE,
    seq             integer NOT NULL,
    distribution_id uuid NOT NULL,
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'enqueued', 'skipped')),
    PRIMARY KEY (replay_id, seq)
);
CREATE INDEX replay_items_pending_idx ON replay_items (replay_id, seq) WHERE state = 'pending';
