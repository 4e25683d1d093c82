-- The due index holds only the runs that can still be claimed, so a run
-- that finishes (done, failed) leaves it instead of adding entries, and the
-- index stays as small as the pending work. (Postgres also drops the
-- foreign key to notifications here; SQLite would need a table rebuild to,
-- and its check is a lookup in the same file, not a row lock.)
DROP INDEX action_runs_due;
CREATE INDEX action_runs_due ON action_runs (action, next_attempt_at)
    WHERE status IN ('pending', 'running');
