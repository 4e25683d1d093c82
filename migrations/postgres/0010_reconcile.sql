-- Reconciliation with ClickBank's Orders API (src/reconcile): one row per
-- run, so the calls a day stay inside the local budget and `kaching
-- reconcile` and the dashboard can say what each run found.
CREATE TABLE reconcile_runs (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account     TEXT        NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    window_from DATE        NOT NULL,
    window_to   DATE        NOT NULL,
    calls       BIGINT      NOT NULL DEFAULT 0,
    missing     BIGINT      NOT NULL DEFAULT 0,
    recovered   BIGINT      NOT NULL DEFAULT 0,
    error       TEXT
);
CREATE INDEX reconcile_runs_account ON reconcile_runs (account, started_at);
-- The recovered rows, read at start into the twin index (src/reconcile/recovered.rs).
CREATE INDEX notifications_recovered ON notifications (id) WHERE form = 'orders-api';
COMMENT ON TABLE reconcile_runs IS 'runs of the Orders API reconciliation; counts only, never order data';
COMMENT ON COLUMN reconcile_runs.calls IS 'requests made to the Orders API (the daily budget counts these)';
COMMENT ON COLUMN reconcile_runs.missing IS 'orders ClickBank has that kaching had not stored';
COMMENT ON COLUMN reconcile_runs.recovered IS 'of those, stored by this run (0 for a dry run)';
COMMENT ON COLUMN notifications.form IS 'body form: envelope (v6+ AES), legacy-form (cverify), hmac-json, or orders-api (recovered by reconciliation)';
