-- A run is about a notification or, later, another subject (an alert):
-- `subject_kind` says which, and exactly one of `notification_id` and
-- `subject` is set. See migrations/postgres for the column comments.
--
-- SQLite cannot drop a NOT NULL, so the table is rebuilt the documented way
-- (https://www.sqlite.org/lang_altertable.html, "other kinds of table schema
-- changes"): create the new shape, copy every row with its id, drop the old,
-- rename, recreate the indexes. Nothing references action_runs, so dropping
-- it with foreign keys on cannot fail; its own reference to notifications is
-- checked as rows are copied.
CREATE TABLE action_runs_new (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    subject_kind    TEXT    NOT NULL DEFAULT 'notification'
                    CHECK (subject_kind IN ('notification', 'alert')),
    notification_id INTEGER REFERENCES notifications (id),
    subject         TEXT,
    action          TEXT    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      TEXT    NOT NULL,
    next_attempt_at TEXT    NOT NULL,
    lease_until     TEXT,
    last_error      TEXT,
    finished_at     TEXT,
    CHECK (
        (subject_kind = 'notification' AND notification_id IS NOT NULL AND subject IS NULL)
        OR (subject_kind <> 'notification' AND notification_id IS NULL AND subject IS NOT NULL)
    )
);

INSERT INTO action_runs_new (id, subject_kind, notification_id, subject, action, status,
        attempts, created_at, next_attempt_at, lease_until, last_error, finished_at)
    SELECT id, 'notification', notification_id, NULL, action, status,
        attempts, created_at, next_attempt_at, lease_until, last_error, finished_at
    FROM action_runs;

-- AUTOINCREMENT never reuses an id: carry the counter over, not just the rows.
DELETE FROM sqlite_sequence WHERE name = 'action_runs_new';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'action_runs_new', seq FROM sqlite_sequence WHERE name = 'action_runs';

DROP TABLE action_runs;
ALTER TABLE action_runs_new RENAME TO action_runs;

CREATE INDEX action_runs_due ON action_runs (action, status, next_attempt_at);
CREATE INDEX action_runs_notification ON action_runs (notification_id);
