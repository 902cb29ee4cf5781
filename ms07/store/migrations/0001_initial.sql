-- The system of record. Names and columns the troubleshooting guide's SQL uses are kept
-- exactly; everything else serves the engine and the diagnose checks.

CREATE TABLE destinations (
    name                   text PRIMARY KEY,
    url                    text NOT NULL,
    health_url             text,
    health_status          text NOT NULL DEFAULT 'unknown'
                           CHECK (health_status IN ('healthy', 'unhealthy', 'unknown')),
    last_health_check      timestamptz,
    last_health_latency_ms double precision,
    last_health_error      text,
    configuration          jsonb NOT NULL DEFAULT '{}'::jsonb,
    enabled                boolean NOT NULL DEFAULT true,
    circuit_state          text NOT NULL DEFAULT 'closed'
                           CHECK (circuit_state IN ('closed', 'open', 'half_open')),
    circuit_changed_at     timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE distribution_jobs (
    distribution_id  uuid PRIMARY KEY,
    destination_name text NOT NULL,
    correlation_id   text,
    status           text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'processing', 'retrying', 'delivered', 'failed', 'dead')),
    priority         text NOT NULL DEFAULT 'default',
    payload          bytea NOT NULL,
    content_type     text NOT NULL DEFAULT 'application/json',
    idempotency_key  text,
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL DEFAULT 5,
    next_attempt_at  timestamptz,
    last_error_code  text,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    completed_at     timestamptz
);

-- The guide's stuck-jobs query and diagnose latency's "active distributions".
CREATE INDEX distribution_jobs_processing_created_idx
    ON distribution_jobs (created_at) WHERE status = 'processing';
-- The reconciler and diagnose queue's "lost messages": open jobs by age.
CREATE INDEX distribution_jobs_open_updated_idx
    ON distribution_jobs (updated_at) WHERE status IN ('queued', 'retrying', 'processing');
-- The DLQ as Postgres sees it.
CREATE INDEX distribution_jobs_parked_idx
    ON distribution_jobs (completed_at) WHERE status IN ('failed', 'dead');
CREATE INDEX distribution_jobs_correlation_idx
    ON distribution_jobs (correlation_id) WHERE correlation_id IS NOT NULL;
-- A repeated submit with the same idempotency key answers with the jobs it made.
CREATE UNIQUE INDEX distribution_jobs_idempotency_idx
    ON distribution_jobs (idempotency_key, destination_name) WHERE idempotency_key IS NOT NULL;

CREATE TABLE distribution_attempts (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    distribution_id      uuid NOT NULL,
    destination_name     text NOT NULL,
    attempt              integer NOT NULL,
    worker_id            text,
    status               text NOT NULL CHECK (status IN ('success', 'failed')),
    response_status_code integer,
    error_code           text,
    error_message        text,
    started_at           timestamptz NOT NULL,
    completed_at         timestamptz NOT NULL
);

CREATE INDEX distribution_attempts_job_idx ON distribution_attempts (distribution_id, attempt);
CREATE INDEX distribution_attempts_started_idx ON distribution_attempts (started_at);
CREATE INDEX distribution_attempts_destination_started_idx
    ON distribution_attempts (destination_name, started_at);
-- diagnose auth: 401/403 in a window without scanning every attempt.
CREATE INDEX distribution_attempts_auth_idx
    ON distribution_attempts (started_at) WHERE response_status_code IN (401, 403);
-- diagnose timeouts: timeout attempts in a window.
CREATE INDEX distribution_attempts_errors_idx
    ON distribution_attempts (error_code, started_at) WHERE error_code IS NOT NULL;

CREATE TABLE worker_heartbeats (
    worker_id   text PRIMARY KEY,
    host        text NOT NULL,
    pid         integer NOT NULL,
    started_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    status      text NOT NULL DEFAULT 'active',
    in_flight   integer NOT NULL DEFAULT 0,
    rss_bytes   bigint NOT NULL DEFAULT 0,
    version     text NOT NULL,
    delivered   bigint NOT NULL DEFAULT 0,
    failed      bigint NOT NULL DEFAULT 0
);

-- RSS over time for diagnose memory's trend.
CREATE TABLE worker_heartbeat_samples (
    worker_id  text NOT NULL,
    sampled_at timestamptz NOT NULL DEFAULT now(),
    rss_bytes  bigint NOT NULL,
    in_flight  integer NOT NULL DEFAULT 0,
    PRIMARY KEY (worker_id, sampled_at)
);
CREATE INDEX worker_heartbeat_samples_time_idx ON worker_heartbeat_samples (sampled_at);

CREATE TABLE recovery_audit (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    operator   text NOT NULL,
    plan_id    text NOT NULL,
    plan       text NOT NULL,
    step_index integer,
    step       text NOT NULL,
    command    text,
    outcome    text NOT NULL,
    detail     jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX recovery_audit_plan_idx ON recovery_audit (plan_id, id);
CREATE INDEX recovery_audit_at_idx ON recovery_audit (at);
