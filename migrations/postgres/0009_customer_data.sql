-- Customer data at rest (src/privacy): a notification's personal data
-- (its `customer` object, a legacy post's `ccust*` fields) is cut out of
-- `payload` and kept sealed here; `payload` keeps the rest, with the
-- billing and shipping countries and the email masked.
ALTER TABLE notifications ADD COLUMN customer_sealed TEXT;
ALTER TABLE notifications ADD COLUMN customer_index TEXT;
ALTER TABLE notifications ADD COLUMN erased_at TIMESTAMPTZ;
CREATE INDEX notifications_customer_index ON notifications (customer_index)
    WHERE customer_index IS NOT NULL;
COMMENT ON COLUMN notifications.customer_sealed IS 'the personal data, JSON sealed with XChaCha20-Poly1305: v1.<key id>.<base64 nonce+ciphertext>, bound to the row by its dedup key; NULL when there is none or it was erased';
COMMENT ON COLUMN notifications.customer_index IS 'blind index: HMAC-SHA256 of the trimmed, lowercased buyer email under a key derived from the data key';
COMMENT ON COLUMN notifications.erased_at IS 'when the personal data was erased (kaching erase, retention)';

-- The data keys that have sealed rows, by id (never the key): a start with a
-- key that cannot open them is refused.
CREATE TABLE privacy_keys (
    id         TEXT        PRIMARY KEY,
    first_used TIMESTAMPTZ NOT NULL
);

-- Each erasure: when, how many rows; no personal data.
CREATE TABLE erasures (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    erased_at     TIMESTAMPTZ NOT NULL,
    reason        TEXT        NOT NULL,
    notifications BIGINT      NOT NULL,
    rejected      BIGINT      NOT NULL
);
COMMENT ON COLUMN erasures.reason IS 'request (kaching erase) or retention';

ALTER TABLE rejected ADD COLUMN sealed BOOLEAN NOT NULL DEFAULT FALSE;
COMMENT ON COLUMN rejected.sealed IS 'body holds the raw post sealed under the data key (text bytes), not the raw post';
