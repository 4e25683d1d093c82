-- A run is about a notification or, later, another subject (an alert):
-- `subject_kind` says which, and exactly one of `notification_id` and
-- `subject` is set. Existing rows are all notifications' runs: the default
-- kind fits them, and their `action` already holds the action's name.
ALTER TABLE action_runs ALTER COLUMN notification_id DROP NOT NULL;
ALTER TABLE action_runs
    ADD COLUMN subject_kind TEXT NOT NULL DEFAULT 'notification'
        CONSTRAINT action_runs_subject_kind CHECK (subject_kind IN ('notification', 'alert')),
    ADD COLUMN subject TEXT,
    ADD CONSTRAINT action_runs_one_subject CHECK (
        (subject_kind = 'notification' AND notification_id IS NOT NULL AND subject IS NULL)
        OR (subject_kind <> 'notification' AND notification_id IS NULL AND subject IS NOT NULL)
    );

COMMENT ON COLUMN action_runs.subject_kind IS 'what the run is about: notification (notification_id is set) or alert (subject is set)';
COMMENT ON COLUMN action_runs.notification_id IS 'the notification, when subject_kind = notification; otherwise NULL';
COMMENT ON COLUMN action_runs.subject IS 'a JSON object describing any other subject (an alert: {"id": 7, "subject": "…"}; provisional until alerts have a table); NULL for a notification';
COMMENT ON COLUMN action_runs.action IS 'the [[actions]] name (not its position: stable across config edits); a run whose action is no longer configured is kept, orphaned, and not executed';
