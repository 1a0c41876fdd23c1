-- Teams: every run belongs to one; an idempotency key is the team's own, and a key
-- reused with a different request is told apart by the request's hash.
ALTER TABLE runs ADD COLUMN team TEXT NOT NULL DEFAULT 'default';
ALTER TABLE runs ADD COLUMN request_hash TEXT;
ALTER TABLE runs DROP CONSTRAINT runs_idempotency_key_key;
CREATE UNIQUE INDEX runs_team_idempotency_key_idx ON runs (team, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_team_created_idx ON runs (team, created_at DESC, id);

-- Personas an admin registered by name: the only way a non-admin run reaches a
-- model provider.
CREATE TABLE persona_registry (
    name           TEXT PRIMARY KEY,
    persona_hash   TEXT        NOT NULL REFERENCES personas (hash),
    registered_by  TEXT,
    registered_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A provider-reported cost that is negative or absurd is not trusted: the ledger keeps
-- what the provider said beside the cost it used, and where that cost came from.
ALTER TABLE llm_calls ADD COLUMN reported_cost_usd DOUBLE PRECISION;
ALTER TABLE llm_calls ADD COLUMN cost_source TEXT;
