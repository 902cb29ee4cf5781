-- Issue 19: a replay started through POST /api/v1/replays survives its engine.
--
-- ``runner`` says who resumes an unfinished replay: 'engine' (started or last run by an
-- engine: any engine's upkeep takes it over once nobody holds its session lock, that is
-- once its runner's connection is gone), or 'cli' (``ms07 replay`` / ``dlq replay --all``:
-- resumed by running the same command again). ``rate`` is the pace it was started at,
-- kept for whoever continues it. Replays planned before this migration are 'cli' (resumed
-- by hand, as before).
ALTER TABLE replays
    ADD COLUMN runner text NOT NULL DEFAULT 'cli' CHECK (runner IN ('cli', 'engine')),
    ADD COLUMN rate double precision CHECK (rate > 0);
CREATE INDEX replays_engine_unfinished_idx ON replays (created_at)
    WHERE runner = 'engine' AND status IN ('running', 'interrupted');
