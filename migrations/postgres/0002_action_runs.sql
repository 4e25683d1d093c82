-- The outbox: one row per (new notification, matching action), written in
-- the notification's own transaction, so no follow-up work is ever lost.
CREATE TABLE action_runs (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    notification_id BIGINT      NOT NULL REFERENCES notifications (id),
    action          TEXT        NOT NULL,
    status          TEXT        NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts        INTEGER     NOT NULL DEFAULT 0,
    created_at      TIMESTAMPTZ NOT NULL,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    lease_until     TIMESTAMPTZ,
    last_error      TEXT,
    finished_at     TIMESTAMPTZ
);

CREATE INDEX action_runs_due ON action_runs (action, status, next_attempt_at);
CREATE INDEX action_runs_notification ON action_runs (notification_id);

COMMENT ON TABLE action_runs IS 'follow-up work per notification and action (outbox); the dispatcher claims, runs, retries and dead-letters these';
COMMENT ON COLUMN action_runs.action IS 'the [[actions]] name';
COMMENT ON COLUMN action_runs.status IS 'pending (due at next_attempt_at), running (leased until lease_until), done, failed (dead letter)';
COMMENT ON COLUMN action_runs.attempts IS 'executions started so far; also the fencing token of the current lease';
COMMENT ON COLUMN action_runs.created_at IS 'when the run was created; retry.max_age counts from here';
COMMENT ON COLUMN action_runs.lease_until IS 'a running run whose lease has passed is taken over (its process died)';
COMMENT ON COLUMN action_runs.last_error IS 'the latest failure, kept on the dead letter';
