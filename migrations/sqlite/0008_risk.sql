-- Same logical schema as migrations/postgres/0008_risk.sql; see the comments there.
CREATE TABLE risk_models (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    trained_at TEXT    NOT NULL,
    data_from  TEXT    NOT NULL,
    data_to    TEXT    NOT NULL,
    sales      INTEGER NOT NULL,
    refunds    INTEGER NOT NULL,
    model      TEXT    NOT NULL,
    evaluation TEXT    NOT NULL
);

ALTER TABLE notifications ADD COLUMN refund_risk REAL;
