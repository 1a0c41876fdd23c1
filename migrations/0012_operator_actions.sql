-- Every operator action (pause, resume, drain, undrain, requeue, cancel, re-open,
-- prune), from the API, the web UI or the CLI: who, what, when, and how it ended.
CREATE TABLE operator_actions (
    id      BIGSERIAL   PRIMARY KEY,
    at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor   TEXT        NOT NULL,
    via     TEXT        NOT NULL CHECK (via IN ('api', 'cli')),
    action  TEXT        NOT NULL,
    target  TEXT,
    ok      BOOLEAN     NOT NULL,
    result  TEXT        NOT NULL,
    detail  JSONB       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX operator_actions_at_idx ON operator_actions (at DESC, id DESC);
