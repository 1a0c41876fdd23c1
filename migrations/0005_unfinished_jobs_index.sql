-- Depth by queue and state (metrics, `admin stats`, autoscaling, the KEDA query) without
-- scanning finished history: only unfinished and dead jobs are indexed.
CREATE INDEX jobs_unfinished_idx ON jobs (queue, state) WHERE state IN ('ready', 'running', 'dead');
