-- The outbox: one row per (new notification, matching action), written in
-- the notification's own transaction. See migrations/postgres for comments.
CREATE TABLE action_runs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    notification_id INTEGER NOT NULL REFERENCES notifications (id),
    action          TEXT    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      TEXT    NOT NULL,
    next_attempt_at TEXT    NOT NULL,
    lease_until     TEXT,
    last_error      TEXT,
    finished_at     TEXT
);

CREATE INDEX action_runs_due ON action_runs (action, status, next_attempt_at);
CREATE INDEX action_runs_notification ON action_runs (notification_id);

-- Every time in this database is RFC 3339 UTC text in one shape, sqlx's
-- encoding of a DateTime<Utc> (2026-11-20T18:00:00+00:00, fractions in 3, 6
-- or 9 digits), so text comparison orders them correctly.
