-- A run whose budget ran out waits for an approver to raise it (or to abort) instead of
-- failing. It keeps the phase job it stopped at, to enqueue again on a top-up; each
-- park gets a number, so the resumed attempt is a new job.
ALTER TYPE run_state ADD VALUE IF NOT EXISTS 'awaiting_budget';
ALTER TABLE runs ADD COLUMN budget_parks INT NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN parked_job JSONB;

-- Prices fetched from a provider's price list (`price_list_url`), per million tokens,
-- kept for the provider's `price_list_ttl`.
CREATE TABLE model_prices (
    provider                  TEXT             NOT NULL,
    model                     TEXT             NOT NULL,
    input_usd_per_mtok        DOUBLE PRECISION NOT NULL,
    cached_input_usd_per_mtok DOUBLE PRECISION NOT NULL,
    output_usd_per_mtok       DOUBLE PRECISION NOT NULL,
    fetched_at                TIMESTAMPTZ      NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, model)
);

-- What a worker can do (e.g. `provider:openrouter` when it holds that provider's key),
-- and what a job needs: a job that requires a capability is claimed only by a worker
-- that has it.
ALTER TABLE workers ADD COLUMN capabilities TEXT[] NOT NULL DEFAULT '{}';
ALTER TABLE jobs ADD COLUMN requires TEXT;
-- The capability a phase's jobs require (the provider its persona calls), set at submit.
ALTER TABLE run_phases ADD COLUMN requires TEXT;
