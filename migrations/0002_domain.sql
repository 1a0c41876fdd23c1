-- Domain tables for runs, phases, artifacts, approvals, events, ledger and reports.
CREATE TABLE templates (
    hash        TEXT PRIMARY KEY,           -- sha256 of canonical JSON
    name        TEXT        NOT NULL,
    version     TEXT        NOT NULL,
    body        JSONB       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX templates_name_idx ON templates (name, version);

CREATE TABLE personas (
    hash        TEXT PRIMARY KEY,
    name        TEXT        NOT NULL,
    version     TEXT        NOT NULL,
    body        JSONB       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TYPE run_state AS ENUM ('queued', 'running', 'awaiting_approval', 'completed', 'failed', 'aborted', 'cancelled');

CREATE TABLE runs (
    id                UUID PRIMARY KEY,
    template_hash     TEXT        NOT NULL REFERENCES templates (hash),
    state             run_state   NOT NULL DEFAULT 'queued',
    idempotency_key   TEXT UNIQUE,
    submitted_by      TEXT,
    budget_usd        DOUBLE PRECISION,
    budget_tokens     BIGINT,
    spent_usd         DOUBLE PRECISION NOT NULL DEFAULT 0,
    spent_tokens      BIGINT      NOT NULL DEFAULT 0,
    error             TEXT,
    next_event_seq    BIGINT      NOT NULL DEFAULT 1,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at        TIMESTAMPTZ,
    finished_at       TIMESTAMPTZ,
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX runs_state_idx ON runs (state, created_at DESC);
CREATE INDEX runs_created_idx ON runs (created_at DESC, id);

CREATE TABLE run_inputs (
    run_id        UUID PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    requirements  TEXT  NOT NULL DEFAULT '',
    objective     JSONB NOT NULL DEFAULT '{}'::jsonb,
    extra         JSONB NOT NULL DEFAULT '{}'::jsonb
);

CREATE TABLE run_bindings (
    run_id        UUID NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    role          TEXT NOT NULL,
    persona_hash  TEXT NOT NULL REFERENCES personas (hash),
    binding_hash  TEXT NOT NULL,
    overridden    BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (run_id, role)
);

CREATE TYPE phase_state AS ENUM ('pending', 'running', 'validating', 'awaiting_approval', 'completed', 'failed', 'skipped');

CREATE TABLE run_phases (
    run_id        UUID        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    position      INT         NOT NULL,
    phase_key     TEXT        NOT NULL,
    role          TEXT        NOT NULL,
    state         phase_state NOT NULL DEFAULT 'pending',
    attempts      INT         NOT NULL DEFAULT 0,
    max_attempts  INT         NOT NULL,
    -- bumped by a "revise" decision: a new round of attempts with the reviewer's comment
    round         INT         NOT NULL DEFAULT 1,
    revise_comment TEXT,
    error         TEXT,
    started_at    TIMESTAMPTZ,
    finished_at   TIMESTAMPTZ,
    PRIMARY KEY (run_id, phase_key),
    UNIQUE (run_id, position)
);

CREATE TABLE artifacts (
    id            BIGSERIAL PRIMARY KEY,
    run_id        UUID        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    phase_key     TEXT        NOT NULL,
    round         INT         NOT NULL,
    attempt       INT         NOT NULL,
    path          TEXT        NOT NULL,
    schema_id     TEXT        NOT NULL,
    content       TEXT,
    sha256        TEXT,
    valid         BOOLEAN     NOT NULL,
    validation_errors JSONB   NOT NULL DEFAULT '[]'::jsonb,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (run_id, phase_key, round, attempt)
);

CREATE TYPE approval_state AS ENUM ('pending', 'decided');
CREATE TYPE approval_action AS ENUM ('approve', 'reject', 'abort', 'revise');

CREATE TABLE approval_requests (
    id               UUID PRIMARY KEY,
    run_id           UUID        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    phase_key        TEXT        NOT NULL,
    round            INT         NOT NULL,
    artifact_id      BIGINT      NOT NULL REFERENCES artifacts (id),
    gates            TEXT[]      NOT NULL,
    state            approval_state NOT NULL DEFAULT 'pending',
    -- scoped to the run: the reference engine's bug was a key without the run id
    idempotency_key  TEXT        NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (run_id, idempotency_key)
);
CREATE INDEX approval_requests_pending_idx ON approval_requests (created_at) WHERE state = 'pending';

CREATE TABLE approval_decisions (
    request_id   UUID PRIMARY KEY REFERENCES approval_requests (id) ON DELETE CASCADE,
    run_id       UUID        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    action       approval_action NOT NULL,
    comment      TEXT,
    decided_by   TEXT,
    decided_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE run_events (
    run_id           UUID        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq              BIGINT      NOT NULL,
    kind             TEXT        NOT NULL,
    phase_key        TEXT,
    idempotency_key  TEXT        NOT NULL,
    data             JSONB       NOT NULL DEFAULT '{}'::jsonb,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, seq),
    UNIQUE (run_id, idempotency_key)
);

CREATE TABLE llm_calls (
    id                 BIGSERIAL PRIMARY KEY,
    run_id             UUID        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    phase_key          TEXT        NOT NULL,
    attempt            INT         NOT NULL,
    turn               INT         NOT NULL,
    model              TEXT        NOT NULL,
    backend            TEXT        NOT NULL,
    status             TEXT        NOT NULL,
    tokens_in          BIGINT      NOT NULL DEFAULT 0,
    tokens_out         BIGINT      NOT NULL DEFAULT 0,
    tokens_cached      BIGINT      NOT NULL DEFAULT 0,
    tokens_reasoning   BIGINT      NOT NULL DEFAULT 0,
    cost_usd           DOUBLE PRECISION NOT NULL DEFAULT 0,
    latency_ms         BIGINT      NOT NULL DEFAULT 0,
    provider_request_id TEXT,
    error              TEXT,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX llm_calls_run_idx ON llm_calls (run_id);

CREATE TABLE tool_calls (
    id            BIGSERIAL PRIMARY KEY,
    run_id        UUID        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    phase_key     TEXT        NOT NULL,
    attempt       INT         NOT NULL,
    turn          INT         NOT NULL,
    tool          TEXT        NOT NULL,
    arguments     JSONB       NOT NULL,
    ok            BOOLEAN     NOT NULL,
    result_summary TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX tool_calls_run_idx ON tool_calls (run_id);

CREATE TABLE reports (
    run_id       UUID PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    final_state  run_state   NOT NULL,
    json         JSONB       NOT NULL,
    markdown     TEXT        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
