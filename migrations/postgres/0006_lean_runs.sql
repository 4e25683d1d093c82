-- The outbox costs less per run (measured in bench/versus.sh, see README's
-- Performance section):
-- * The due index holds only the runs that can still be claimed, so a run
--   that finishes (done, failed) leaves its entries there behind instead of
--   adding new ones, and the index stays as small as the pending work.
-- * No foreign key to notifications: every notification run is written in
--   its notification's own transaction (or by the CLI for a stored one), and
--   notifications are never deleted; the check locked the notification row
--   for each run, which cost as much as the run's own insert.
DROP INDEX action_runs_due;
CREATE INDEX action_runs_due ON action_runs (action, next_attempt_at)
    WHERE status IN ('pending', 'running');
ALTER TABLE action_runs DROP CONSTRAINT IF EXISTS action_runs_notification_id_fkey;
