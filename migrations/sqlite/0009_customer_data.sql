-- Same logical schema as migrations/postgres/0009_customer_data.sql; see the comments there.
ALTER TABLE notifications ADD COLUMN customer_sealed TEXT;
ALTER TABLE notifications ADD COLUMN customer_index TEXT;
ALTER TABLE notifications ADD COLUMN erased_at TEXT;
CREATE INDEX notifications_customer_index ON notifications (customer_index)
    WHERE customer_index IS NOT NULL;

CREATE TABLE privacy_keys (
    id         TEXT PRIMARY KEY,
    first_used TEXT NOT NULL
);

CREATE TABLE erasures (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    erased_at     TEXT    NOT NULL,
    reason        TEXT    NOT NULL,
    notifications INTEGER NOT NULL,
    rejected      INTEGER NOT NULL
);

ALTER TABLE rejected ADD COLUMN sealed INTEGER NOT NULL DEFAULT 0;
