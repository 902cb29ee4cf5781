-- Issue 18: retention and payload expunge.
--
-- A payload can go before its row (retention.payload_days, DELETE .../payload, ms07 jobs
-- expunge): the row keeps its id, destination, status, timings and error, the payload is
-- set empty and the time it went is recorded here. Nullable without a default: adding it
-- rewrites nothing, on a table of any size.
ALTER TABLE distribution_jobs ADD COLUMN IF NOT EXISTS payload_expunged_at timestamptz;

-- One row per retention run (engine or ms07 db prune): what it removed, and when it last
-- succeeded, for diagnose and the metrics of replicas that did not run it. Retention
-- keeps the newest 1,000.
CREATE TABLE IF NOT EXISTS retention_runs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now(),
    runner      text NOT NULL,
    dry_run     boolean NOT NULL DEFAULT false,
    outcome     text NOT NULL CHECK (outcome IN ('done', 'partial', 'error')),
    removed     jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS retention_runs_finished_idx ON retention_runs (finished_at);
