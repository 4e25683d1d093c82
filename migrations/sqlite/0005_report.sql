-- Same logical schema as migrations/postgres/0005_report.sql; see the comments there.
-- The read model of the dashboard and its API, derived from `notifications`
-- by the projector (src/report/project.rs) in id order. Derived only: all of
-- it can be rebuilt from `notifications` with `kaching report rebuild`.

-- How far the projection has read, written in the same transaction as what it wrote.
CREATE TABLE report_state (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    last_id INTEGER  NOT NULL
);
INSERT INTO report_state (id, last_id) VALUES (1, 0);

-- One row per projected notification: what the notification list filters on.
CREATE TABLE report_facts (
    notification_id INTEGER PRIMARY KEY REFERENCES notifications (id),
    account         TEXT   NOT NULL,
    receipt         TEXT   NOT NULL,
    day             TEXT   NOT NULL,
    kind            TEXT   NOT NULL,
    currency        TEXT   NOT NULL,
    micros          INTEGER NOT NULL,
    sale_receipt    TEXT   NOT NULL,
    payment_method  TEXT,
    country         TEXT,
    dims            TEXT   NOT NULL,
    tracking        TEXT   NOT NULL
);
CREATE INDEX report_facts_receipt ON report_facts (receipt, account);
CREATE INDEX report_facts_sale_receipt ON report_facts (sale_receipt);
CREATE INDEX report_facts_day ON report_facts (day);


-- Daily sums per (account, UTC day, currency, breakdown value): what every
-- figure of the overview and the breakdown pages is summed from.
CREATE TABLE report_daily (
    account           TEXT   NOT NULL,
    dim               TEXT   NOT NULL,
    day               TEXT   NOT NULL,
    currency          TEXT   NOT NULL,
    value             TEXT   NOT NULL,
    label             TEXT   NOT NULL,
    sales             INTEGER NOT NULL,
    rebills           INTEGER NOT NULL,
    gross_micros      INTEGER NOT NULL,
    refunds           INTEGER NOT NULL,
    refund_micros     INTEGER NOT NULL,
    chargebacks       INTEGER NOT NULL,
    chargeback_micros INTEGER NOT NULL,
    cancels           INTEGER NOT NULL,
    uncancels         INTEGER NOT NULL,
    cohort_refunds    INTEGER NOT NULL,
    cohort_chargebacks INTEGER NOT NULL,
    PRIMARY KEY (dim, day, account, currency, value)
);


-- One row per subscription (a sale with a recurring line item).
CREATE TABLE report_subscriptions (
    account      TEXT   NOT NULL,
    receipt      TEXT   NOT NULL,
    item_no      TEXT   NOT NULL,
    title        TEXT   NOT NULL,
    currency     TEXT   NOT NULL,
    started_day  TEXT   NOT NULL,
    rebills      INTEGER NOT NULL,
    last_day     TEXT   NOT NULL,
    status       TEXT   NOT NULL CHECK (status IN ('active', 'cancelled', 'refunded')),
    ended_day    TEXT,
    PRIMARY KEY (account, receipt)
);
CREATE INDEX report_subscriptions_started ON report_subscriptions (started_day);

