-- The job queue. One row per job; the row is the lease. See docs/adr/0001-own-queue-on-sqlx.md.
CREATE TYPE job_state AS ENUM ('ready', 'running', 'completed', 'dead', 'cancelled');

CREATE TABLE jobs (
    id               BIGSERIAL PRIMARY KEY,
    queue            TEXT        NOT NULL DEFAULT 'default',
    kind             TEXT        NOT NULL,
    payload          JSONB       NOT NULL DEFAULT '{}'::jsonb,
    state            job_state   NOT NULL DEFAULT 'ready',
    priority         SMALLINT    NOT NULL DEFAULT 0,
    run_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- deliveries that started the handler (a claim), including ones lost to crashes
    attempts         INT         NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts     INT         NOT NULL DEFAULT 5 CHECK (max_attempts > 0),
    -- how many times an expired lease was taken back from a lost worker
    rescues          INT         NOT NULL DEFAULT 0,
    -- fencing token: bumped on every claim; completion must present the current one
    lease_token      BIGINT      NOT NULL DEFAULT 0,
    lease_owner      UUID,
    lease_expires_at TIMESTAMPTZ,
    cancel_requested BOOLEAN     NOT NULL DEFAULT false,
    unique_key       TEXT,
    last_error       TEXT,
    run_id           UUID,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at       TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ,
    CONSTRAINT jobs_lease_consistent CHECK (
        (state = 'running') = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)
    )
);

-- claim path: only ready rows, in claim order
CREATE INDEX jobs_claim_idx ON jobs (queue, priority DESC, run_at, id) WHERE state = 'ready';
-- rescue path: only running rows, by expiry
CREATE INDEX jobs_lease_idx ON jobs (lease_expires_at) WHERE state = 'running';
-- pruning and history
CREATE INDEX jobs_finished_idx ON jobs (finished_at) WHERE state IN ('completed', 'dead', 'cancelled');
CREATE INDEX jobs_run_idx ON jobs (run_id) WHERE run_id IS NOT NULL;
-- idempotent enqueue: a key is taken once for the life of the row
CREATE UNIQUE INDEX jobs_unique_key_idx ON jobs (unique_key) WHERE unique_key IS NOT NULL;

-- fleet-wide pause: a row per paused queue, '*' pauses every queue
CREATE TABLE queue_pauses (
    queue      TEXT PRIMARY KEY,
    paused_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    reason     TEXT
);

CREATE TABLE workers (
    id              UUID PRIMARY KEY,
    name            TEXT        NOT NULL,
    host            TEXT        NOT NULL,
    pid             INT         NOT NULL,
    queues          TEXT[]      NOT NULL,
    concurrency     INT         NOT NULL,
    state           TEXT        NOT NULL DEFAULT 'running'
                    CHECK (state IN ('running', 'draining', 'drained', 'stopped')),
    drain_requested BOOLEAN     NOT NULL DEFAULT false,
    in_flight       INT         NOT NULL DEFAULT 0,
    started_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    stopped_at      TIMESTAMPTZ
);
CREATE INDEX workers_heartbeat_idx ON workers (heartbeat_at);

ALTER TABLE jobs ADD COLUMN finished_by UUID;

-- Wake idle workers when a job becomes ready. Notifications are sent at commit, so a
-- job enqueued inside a caller's transaction wakes nobody if that transaction rolls back.
CREATE FUNCTION jobs_notify_ready() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('phasefleet_jobs', NEW.queue);
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_notify_ready_insert AFTER INSERT ON jobs
    FOR EACH ROW WHEN (NEW.state = 'ready') EXECUTE FUNCTION jobs_notify_ready();
CREATE TRIGGER jobs_notify_ready_update AFTER UPDATE OF state ON jobs
    FOR EACH ROW WHEN (NEW.state = 'ready' AND OLD.state <> 'ready') EXECUTE FUNCTION jobs_notify_ready();
