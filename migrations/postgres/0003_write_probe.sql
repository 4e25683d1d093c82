-- One row that /readyz rewrites: readiness means a commit works, not only a read.
CREATE TABLE write_probe (
    id        INTEGER     PRIMARY KEY CHECK (id = 1),
    probed_at TIMESTAMPTZ NOT NULL
);

COMMENT ON TABLE write_probe IS 'rewritten by /readyz when no notification committed lately: proves the database still takes commits (disk not full, not read-only)';
