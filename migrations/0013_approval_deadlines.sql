-- An approval may have a deadline: when it passes undecided, a scheduled queue job
-- applies `on_timeout` (reject, abort, approve, escalate). An escalated approval waits
-- on the `escalated_to` approver group.
ALTER TABLE approval_requests
    ADD COLUMN deadline_at  TIMESTAMPTZ,
    ADD COLUMN on_timeout   TEXT CHECK (on_timeout IN ('reject', 'abort', 'approve', 'escalate')),
    ADD COLUMN escalate_to  TEXT,
    ADD COLUMN escalated_at TIMESTAMPTZ;
