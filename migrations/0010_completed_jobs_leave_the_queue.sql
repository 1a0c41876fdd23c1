-- A completed job leaves `jobs` in the statement that completes it (docs/adr/0012):
-- the table holds only work that is waiting, running, dead-lettered or cancelled, so
-- claims, completions and stats cost the same after a month of history as on the first
-- day. What a completed phase did stays in the domain tables (run_phases, run_events,
-- artifacts, llm_calls). Completed rows of earlier versions (and of workers of the
-- previous release during a rolling upgrade) stay until `admin prune` removes them in
-- batches; `finished_by`, which only the previous release's completion writes, stays
-- until the release after this one.

-- A claim writes a new row version, which goes into every index whose predicate it
-- meets: the depth index (queue, state) for ready, running and dead jobs cost each
-- claim an index insert. Depth is counted per state through the claim index (ready),
-- the lease index (running) and this small one (dead). Building it reads the table
-- once: prune completed jobs before upgrading a large one (docs/operations.md).
CREATE INDEX jobs_dead_idx ON jobs (queue) WHERE state = 'dead';
DROP INDEX IF EXISTS jobs_unfinished_idx;

-- Throughput, now that completed rows are gone: each worker adds what it completed
-- since its previous heartbeat (one row per worker and heartbeat, none when idle).
-- `admin stats` sums the last minute; workers delete rows older than a day.
CREATE TABLE job_completions (
    at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    worker_id UUID        NOT NULL,
    queue     TEXT        NOT NULL,
    completed INT         NOT NULL CHECK (completed > 0)
);
CREATE INDEX job_completions_at_idx ON job_completions (at);
