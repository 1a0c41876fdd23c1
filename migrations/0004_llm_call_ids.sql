-- Every model HTTP attempt is recorded before it is sent (status 'in_flight', with a
-- call id sent to the provider as X-Phasefleet-Call) and finished after, so a worker
-- killed mid-call still leaves a row: the ledger accounts for every request made.
ALTER TABLE llm_calls ADD COLUMN call_id UUID;
ALTER TABLE llm_calls ADD COLUMN finished_at TIMESTAMPTZ;
CREATE UNIQUE INDEX llm_calls_call_id_idx ON llm_calls (call_id) WHERE call_id IS NOT NULL;
