-- The read model of the dashboard and its API, derived from `notifications`
-- by the projector (src/report/project.rs) in id order. Derived only: all of
-- it can be rebuilt from `notifications` with `kaching report rebuild`.

-- How far the projection has read, written in the same transaction as what it wrote.
CREATE TABLE report_state (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    last_id BIGINT  NOT NULL
);
INSERT INTO report_state (id, last_id) VALUES (1, 0);

-- One row per projected notification: what the notification list filters on.
CREATE TABLE report_facts (
    notification_id BIGINT PRIMARY KEY REFERENCES notifications (id),
    account         TEXT   NOT NULL,
    receipt         TEXT   NOT NULL,
    day             TEXT   NOT NULL,
    kind            TEXT   NOT NULL,
    currency        TEXT   NOT NULL,
    micros          BIGINT NOT NULL,
    sale_receipt    TEXT   NOT NULL,
    payment_method  TEXT,
    country         TEXT,
    dims            TEXT   NOT NULL,
    tracking        TEXT   NOT NULL
);
CREATE INDEX report_facts_receipt ON report_facts (receipt, account);
CREATE INDEX report_facts_sale_receipt ON report_facts (sale_receipt);
CREATE INDEX report_facts_day ON report_facts (day);

COMMENT ON TABLE report_facts IS 'per notification: kind, UTC day, exact money and breakdown values, read from its payload';
COMMENT ON COLUMN report_facts.day IS 'UTC day of transaction_time, YYYY-MM-DD';
COMMENT ON COLUMN report_facts.kind IS 'sale, rebill, refund, chargeback, cancel, uncancel, test or other';
COMMENT ON COLUMN report_facts.micros IS 'totalAccountAmount in millionths of the currency unit, signed as sent';
COMMENT ON COLUMN report_facts.sale_receipt IS 'the receipt of the sale it belongs to (a rebill ABCD1234-B002: ABCD1234; a refund: the receipt it reverses)';
COMMENT ON COLUMN report_facts.dims IS 'JSON array of the breakdown values it counts under: [{"dim":"product","value":"1","label":"…","micros":…},…]';
COMMENT ON COLUMN report_facts.tracking IS 'JSON object of its affiliateTrackingParameters (v8), per-click ids included';

-- Daily sums per (account, UTC day, currency, breakdown value): what every
-- figure of the overview and the breakdown pages is summed from.
CREATE TABLE report_daily (
    account           TEXT   NOT NULL,
    dim               TEXT   NOT NULL,
    day               TEXT   NOT NULL,
    currency          TEXT   NOT NULL,
    value             TEXT   NOT NULL,
    label             TEXT   NOT NULL,
    sales             BIGINT NOT NULL,
    rebills           BIGINT NOT NULL,
    gross_micros      BIGINT NOT NULL,
    refunds           BIGINT NOT NULL,
    refund_micros     BIGINT NOT NULL,
    chargebacks       BIGINT NOT NULL,
    chargeback_micros BIGINT NOT NULL,
    cancels           BIGINT NOT NULL,
    uncancels         BIGINT NOT NULL,
    cohort_refunds    BIGINT NOT NULL,
    cohort_chargebacks BIGINT NOT NULL,
    PRIMARY KEY (dim, day, account, currency, value)
);

COMMENT ON TABLE report_daily IS 'daily sums per breakdown value; dim is all (value empty), product, affiliate, tid or a v8 tracking parameter';
COMMENT ON COLUMN report_daily.gross_micros IS 'account amount of the day''s sales and rebills, micros';
COMMENT ON COLUMN report_daily.refund_micros IS 'absolute account amount of the day''s refunds, micros';
COMMENT ON COLUMN report_daily.cohort_refunds IS 'refunds, so far, of the orders made on this day (matched by receipt): the cohort refund rate''s numerator';

-- One row per subscription (a sale with a recurring line item).
CREATE TABLE report_subscriptions (
    account      TEXT   NOT NULL,
    receipt      TEXT   NOT NULL,
    item_no      TEXT   NOT NULL,
    title        TEXT   NOT NULL,
    currency     TEXT   NOT NULL,
    started_day  TEXT   NOT NULL,
    rebills      BIGINT NOT NULL,
    last_day     TEXT   NOT NULL,
    status       TEXT   NOT NULL CHECK (status IN ('active', 'cancelled', 'refunded')),
    ended_day    TEXT,
    PRIMARY KEY (account, receipt)
);
CREATE INDEX report_subscriptions_started ON report_subscriptions (started_day);

COMMENT ON TABLE report_subscriptions IS 'subscriptions: the sale, its rebills so far, and whether it was cancelled (CANCEL-REBILL, undone by UNCANCEL-REBILL) or refunded';
