-- Same logical schema as migrations/postgres/0007_alerts.sql; see the comments there.
-- Alerts (src/alerts): what the configured [[alerts]] rules found, what they
-- learned, and the hourly sums the silence rule reads.

-- One row per alert. A rule's subject has at most one open alert: `firing`
-- (until it resolves) or `fired` (a one-shot event, such as a chargeback,
-- that never resolves); the unique index makes that hold for two daemons on
-- one database too (the second insert does nothing).
CREATE TABLE alerts (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    rule             TEXT        NOT NULL,
    kind             TEXT        NOT NULL,
    account          TEXT,
    subject          TEXT        NOT NULL,
    state            TEXT        NOT NULL CHECK (state IN ('firing', 'resolved', 'fired')),
    title            TEXT        NOT NULL,
    message          TEXT        NOT NULL,
    details          TEXT        NOT NULL,
    fired_at         TEXT        NOT NULL,
    resolved_at      TEXT,
    resolved_message TEXT
);
CREATE UNIQUE INDEX alerts_open ON alerts (rule, subject) WHERE state IN ('firing', 'fired');
CREATE INDEX alerts_subject ON alerts (rule, subject, resolved_at);
CREATE INDEX alerts_fired_at ON alerts (fired_at);


-- When each rule was first configured: events from before it do not fire.
CREATE TABLE alert_rules (
    name       TEXT        PRIMARY KEY,
    kind       TEXT        NOT NULL,
    first_seen TEXT        NOT NULL
);

-- What schema_drift learned: the JSON paths seen per account, version and
-- transaction type, with the kinds of their values (never the values).
CREATE TABLE schema_paths (
    account          TEXT   NOT NULL,
    version          TEXT   NOT NULL,
    transaction_type TEXT   NOT NULL,
    path             TEXT   NOT NULL,
    kinds            TEXT   NOT NULL,
    seen             INTEGER NOT NULL,
    PRIMARY KEY (account, version, transaction_type, path)
);

-- Hourly sums per account (UTC hour of transaction_time), part of the read
-- model (rebuilt with it): the silence rule's hour-of-week profile.
CREATE TABLE report_hourly (
    account      TEXT        NOT NULL,
    hour         TEXT        NOT NULL,
    sales        INTEGER      NOT NULL,
    tests        INTEGER      NOT NULL,
    others       INTEGER      NOT NULL,
    last_sale_at TEXT,
    last_test_at TEXT,
    PRIMARY KEY (account, hour)
);

-- The dead_letter rule reads the runs that failed recently.
CREATE INDEX action_runs_failed ON action_runs (finished_at) WHERE status = 'failed';
