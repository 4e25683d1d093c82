-- The notifications ClickBank sent, one row per distinct notification.
-- Same logical schema as migrations/postgres; see the column comments there.
-- Times are RFC 3339 UTC text, amounts are exact decimal text.
CREATE TABLE notifications (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    account               TEXT    NOT NULL,
    role                  TEXT    NOT NULL,
    receipt               TEXT    NOT NULL,
    transaction_type      TEXT    NOT NULL,
    transaction_time      TEXT    NOT NULL, -- transactionTime in UTC
    vendor                TEXT,
    affiliate             TEXT,
    total_account_amount  TEXT,             -- exact decimal as sent
    total_order_amount    TEXT,
    total_tax_amount      TEXT,
    total_shipping_amount TEXT,
    currency              TEXT,
    version               TEXT,
    attempt_count         INTEGER NOT NULL,
    form                  TEXT    NOT NULL, -- envelope, legacy-form or hmac-json
    payload               TEXT    NOT NULL, -- decrypted notification as received; personal data
    source_ip             TEXT,
    received_at           TEXT    NOT NULL,
    duplicates            INTEGER NOT NULL DEFAULT 0, -- copies after the first
    last_seen_at          TEXT    NOT NULL,
    CONSTRAINT notifications_dedup UNIQUE (account, role, receipt, transaction_type, transaction_time)
);

-- Posts that failed authentication (bounded), for `kaching rejected`.
CREATE TABLE rejected (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at  TEXT NOT NULL,
    source_ip    TEXT,
    account_hint TEXT,  -- the account named in the URL path, if any
    reason       TEXT NOT NULL,
    body         BLOB NOT NULL,
    signature    TEXT   -- the HMAC header value, when present
);
