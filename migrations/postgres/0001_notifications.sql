-- The notifications ClickBank sent, one row per distinct notification.
CREATE TABLE notifications (
    id                    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account               TEXT        NOT NULL,
    role                  TEXT        NOT NULL,
    receipt               TEXT        NOT NULL,
    transaction_type      TEXT        NOT NULL,
    transaction_time      TIMESTAMPTZ NOT NULL,
    vendor                TEXT,
    affiliate             TEXT,
    total_account_amount  NUMERIC,
    total_order_amount    NUMERIC,
    total_tax_amount      NUMERIC,
    total_shipping_amount NUMERIC,
    currency              TEXT,
    version               TEXT,
    attempt_count         INTEGER     NOT NULL,
    form                  TEXT        NOT NULL,
    payload               TEXT        NOT NULL,
    source_ip             TEXT,
    received_at           TIMESTAMPTZ NOT NULL,
    duplicates            BIGINT      NOT NULL DEFAULT 0,
    last_seen_at          TIMESTAMPTZ NOT NULL,
    CONSTRAINT notifications_dedup UNIQUE (account, role, receipt, transaction_type, transaction_time)
);

COMMENT ON TABLE notifications IS 'ClickBank INS notifications, stored once per dedup key before the 200 is sent';
COMMENT ON COLUMN notifications.account IS 'kaching account name (config [[accounts]].name) whose key authenticated it';
COMMENT ON COLUMN notifications.role IS 'role: VENDOR, AFFILIATE, JV_UPSELL…; empty when the notification has none';
COMMENT ON COLUMN notifications.receipt IS 'ClickBank receipt; refunds and chargebacks reuse the sale''s';
COMMENT ON COLUMN notifications.transaction_type IS 'transactionType as sent (SALE, BILL, RFND, …)';
COMMENT ON COLUMN notifications.transaction_time IS 'transactionTime, converted to UTC';
COMMENT ON COLUMN notifications.total_account_amount IS 'exact decimal as sent (legacy: cents / 100)';
COMMENT ON COLUMN notifications.version IS 'notification version as sent: 6.0, 7.0, 8.0, legacy 4.0';
COMMENT ON COLUMN notifications.attempt_count IS 'attemptCount of the first copy stored';
COMMENT ON COLUMN notifications.form IS 'body form: envelope (v6+ AES), legacy-form (cverify) or hmac-json';
COMMENT ON COLUMN notifications.payload IS 'the decrypted notification exactly as received (legacy: the posted fields as a JSON object); contains personal data';
COMMENT ON COLUMN notifications.source_ip IS 'client address after trusted-proxy resolution';
COMMENT ON COLUMN notifications.duplicates IS 'copies that arrived after the first (ClickBank retries, replays)';
COMMENT ON COLUMN notifications.last_seen_at IS 'when the latest copy arrived';

-- Posts that failed authentication, kept (bounded) so a wrong key can be fixed and they reprocessed.
CREATE TABLE rejected (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at  TIMESTAMPTZ NOT NULL,
    source_ip    TEXT,
    account_hint TEXT,
    reason       TEXT        NOT NULL,
    body         BYTEA       NOT NULL,
    signature    TEXT
);

COMMENT ON TABLE rejected IS 'posts rejected for authentication; oldest dropped beyond security.rejected_max_rows';
COMMENT ON COLUMN rejected.account_hint IS 'the account named in the URL path, if any';
COMMENT ON COLUMN rejected.reason IS 'why authentication failed (never shown to the client)';
COMMENT ON COLUMN rejected.body IS 'the raw request body';
COMMENT ON COLUMN rejected.signature IS 'the HMAC header value, when the post had one';
