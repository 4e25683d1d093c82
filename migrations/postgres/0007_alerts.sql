-- Alerts (src/alerts): what the configured [[alerts]] rules found, what they
-- learned, and the hourly sums the silence rule reads.

-- One row per alert. A rule's subject has at most one open alert: `firing`
-- (until it resolves) or `fired` (a one-shot event, such as a chargeback,
-- that never resolves); the unique index makes that hold for two daemons on
-- one database too (the second insert does nothing).
CREATE TABLE alerts (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rule             TEXT        NOT NULL,
    kind             TEXT        NOT NULL,
    account          TEXT,
    subject          TEXT        NOT NULL,
    state            TEXT        NOT NULL CHECK (state IN ('firing', 'resolved', 'fired')),
    title            TEXT        NOT NULL,
    message          TEXT        NOT NULL,
    details          TEXT        NOT NULL,
    fired_at         TIMESTAMPTZ NOT NULL,
    resolved_at      TIMESTAMPTZ,
    resolved_message TEXT
);
CREATE UNIQUE INDEX alerts_open ON alerts (rule, subject) WHERE state IN ('firing', 'fired');
CREATE INDEX alerts_subject ON alerts (rule, subject, resolved_at);
CREATE INDEX alerts_fired_at ON alerts (fired_at);

COMMENT ON TABLE alerts IS 'alerts the [[alerts]] rules fired; delivered through action_runs (subject_kind = alert)';
COMMENT ON COLUMN alerts.rule IS 'the [[alerts]] name';
COMMENT ON COLUMN alerts.kind IS 'refund_spike, chargeback, silence, rejected_surge, schema_drift or dead_letter';
COMMENT ON COLUMN alerts.subject IS 'what it is about, stable across evaluations (product 1037, path lineItems[].x): never personal data';
COMMENT ON COLUMN alerts.state IS 'firing (open until resolved), resolved, or fired (a one-shot event)';
COMMENT ON COLUMN alerts.details IS 'JSON object of the figures behind the message (counts, rates, probabilities, paths)';

-- When each rule was first configured: events from before it do not fire.
CREATE TABLE alert_rules (
    name       TEXT        PRIMARY KEY,
    kind       TEXT        NOT NULL,
    first_seen TIMESTAMPTZ NOT NULL
);

-- What schema_drift learned: the JSON paths seen per account, version and
-- transaction type, with the kinds of their values (never the values).
CREATE TABLE schema_paths (
    account          TEXT   NOT NULL,
    version          TEXT   NOT NULL,
    transaction_type TEXT   NOT NULL,
    path             TEXT   NOT NULL,
    kinds            TEXT   NOT NULL,
    seen             BIGINT NOT NULL,
    PRIMARY KEY (account, version, transaction_type, path)
);
COMMENT ON COLUMN schema_paths.path IS 'a JSON path, arrays as []: lineItems[].itemNo; the empty path counts the notifications themselves';
COMMENT ON COLUMN schema_paths.kinds IS 'comma-separated value kinds seen: array, boolean, number, object, string (null is not a kind)';
COMMENT ON COLUMN schema_paths.seen IS 'notifications that had the path';

-- Hourly sums per account (UTC hour of transaction_time), part of the read
-- model (rebuilt with it): the silence rule's hour-of-week profile.
CREATE TABLE report_hourly (
    account      TEXT        NOT NULL,
    hour         TEXT        NOT NULL,
    sales        BIGINT      NOT NULL,
    tests        BIGINT      NOT NULL,
    others       BIGINT      NOT NULL,
    last_sale_at TIMESTAMPTZ,
    last_test_at TIMESTAMPTZ,
    PRIMARY KEY (account, hour)
);
COMMENT ON COLUMN report_hourly.hour IS 'UTC hour of transaction_time, YYYY-MM-DDTHH';

-- The dead_letter rule reads the runs that failed recently.
CREATE INDEX action_runs_failed ON action_runs (finished_at) WHERE status = 'failed';
