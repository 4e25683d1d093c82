-- Same logical schema as migrations/postgres/0010_reconcile.sql; see the comments there.
CREATE TABLE reconcile_runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    account     TEXT    NOT NULL,
    started_at  TEXT    NOT NULL,
    finished_at TEXT,
    window_from TEXT    NOT NULL,
    window_to   TEXT    NOT NULL,
    calls       INTEGER NOT NULL DEFAULT 0,
    missing     INTEGER NOT NULL DEFAULT 0,
    recovered   INTEGER NOT NULL DEFAULT 0,
    error       TEXT
);
CREATE INDEX reconcile_runs_account ON reconcile_runs (account, started_at);
-- The recovered rows, read at start into the twin index (src/reconcile/recovered.rs).
CREATE INDEX notifications_recovered ON notifications (id) WHERE form = 'orders-api';
