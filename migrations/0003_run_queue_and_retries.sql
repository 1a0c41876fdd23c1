-- The queue a run's phase jobs go to (decisions and retries enqueue there, whoever
-- makes them), and how many times an operator re-opened the failed run.
ALTER TABLE runs ADD COLUMN queue   TEXT NOT NULL DEFAULT 'default';
ALTER TABLE runs ADD COLUMN retries INT  NOT NULL DEFAULT 0;
