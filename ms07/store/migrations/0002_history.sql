-- Issue 19: search the history (GET /api/v1/distributions, ms07 jobs list) and replay by
-- filter (ms07 replay, POST /api/v1/replays).
--
-- The search's indexes are in 0006_history_indexes.sql, built CONCURRENTLY outside a
-- transaction. They were created here at first, in this migration's transaction, which
-- holds writes to distribution_jobs back for the whole build (minutes at 10 million
-- rows). A database that applied this migration in that form has them already (0006
-- then finds them: IF NOT EXISTS); any other gets them from 0006. Same end state.

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
