-- One row that /readyz rewrites: readiness means a commit works, not only a read.
-- probed_at: when the probe last committed (RFC 3339 UTC text).
CREATE TABLE write_probe (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    probed_at TEXT    NOT NULL
);
