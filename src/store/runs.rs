//! The outbox of follow-up actions: runs are created with their notification
//! (see `record_batch`) or for another subject ([`Store::enqueue_run`]),
//! claimed under a lease, and finished as done, due again later, or failed
//! (the dead letter). A run names its action; runs of an action the
//! configuration no longer has are kept and never claimed (orphaned). A claim increments `attempts`,
//! which then fences the finish: a process whose lease ran out and whose run
//! was taken over cannot overwrite the newer attempt's result.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{on_pool, relaxed_tx, text, AlertSubject, Store, StoreError};

/// An action a new notification gets a run for. By name, the key runs are
/// stored under: stable across restarts and config edits (a renamed action
/// is a new action).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRef {
    pub name: Arc<str>,
    /// Set when the creating process executes the run itself (the daemon's
    /// dispatcher): the run is created already claimed, `running` at its
    /// first attempt, under a lease until then, so the fast path needs no
    /// claim statement. A process that dies leaves it to the poller once
    /// the lease expires, like any claimed run.
    pub claimed_until: Option<DateTime<Utc>>,
}

/// A run created with its notification: the dispatcher's hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRun {
    pub id: i64,
    pub action: Arc<str>,
    /// Created claimed by this process, under a lease until then (see [`ActionRef`]).
    pub claimed_until: Option<DateTime<Utc>>,
}

/// What a run is about. Stored as `subject_kind` plus exactly one of
/// `notification_id` (a notification) or `subject` (JSON, any other kind);
/// a CHECK in the schema holds them to that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunSubject {
    Notification(i64),
    Alert(AlertSubject),
}

impl RunSubject {
    /// `subject_kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            RunSubject::Notification(_) => "notification",
            RunSubject::Alert(_) => "alert",
        }
    }

    /// The (`notification_id`, `subject`) columns.
    fn columns(&self) -> (Option<i64>, Option<String>) {
        match self {
            RunSubject::Notification(id) => (Some(*id), None),
            // Serialising two plain fields cannot fail.
            RunSubject::Alert(a) => (None, serde_json::to_string(a).ok()),
        }
    }

    /// Back from the columns; a combination the schema should have refused
    /// is an error naming the column.
    fn from_columns(
        kind: &str,
        notification_id: Option<i64>,
        subject: Option<&str>,
    ) -> Result<RunSubject, StoreError> {
        let bad = |column, reason: &str| StoreError::BadValue {
            column,
            reason: reason.to_owned(),
        };
        match (kind, notification_id, subject) {
            ("notification", Some(id), None) => Ok(RunSubject::Notification(id)),
            ("alert", None, Some(json)) => serde_json::from_str(json)
                .map(RunSubject::Alert)
                .map_err(|e| bad("subject", &format!("not an alert: {e}"))),
            ("notification" | "alert", _, _) => Err(bad(
                "subject",
                "a run needs exactly one of notification_id and subject",
            )),
            _ => Err(bad("subject_kind", "must be notification or alert")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RunStatus {
    Pending,
    Running,
    Done,
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Done => "done",
            RunStatus::Failed => "failed",
        }
    }
}

/// A run as `kaching actions list` shows it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct RunRow {
    pub id: i64,
    pub subject_kind: String,
    pub notification_id: Option<i64>,
    pub subject: Option<String>,
    pub action: String,
    pub status: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The notification's, for a notification's run.
    pub receipt: Option<String>,
    pub transaction_type: Option<String>,
}

impl RunRow {
    /// The status, marked orphaned when the run's action is not in the
    /// configuration (removed or renamed): the run is kept, but no
    /// dispatcher will execute it unless the action comes back. `why` says
    /// what became of the action.
    pub fn status_label(&self, orphaned: Option<&str>) -> String {
        match orphaned {
            Some(why) if self.status != "done" => format!("{} (orphaned: {why})", self.status),
            _ => self.status.clone(),
        }
    }

    /// What the run is about, for a listing: the receipt, or the alert.
    pub fn subject_label(&self) -> String {
        match (&self.receipt, self.subject_kind.as_str()) {
            (Some(r), _) => r.clone(),
            (None, "alert") => {
                let id = self
                    .subject
                    .as_deref()
                    .and_then(|s| serde_json::from_str::<AlertSubject>(s).ok())
                    .map(|a| a.id.to_string())
                    .unwrap_or_default();
                let event = self
                    .subject
                    .as_deref()
                    .and_then(|s| serde_json::from_str::<AlertSubject>(s).ok())
                    .filter(|a| a.event == super::AlertPhase::Resolved)
                    .map_or("", |_| " (resolved)");
                format!("alert {id}{event}")
            }
            (None, kind) => kind.to_owned(),
        }
    }
}

/// A run this process now holds: what executing it needs besides its subject's data.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    /// This attempt's number, and the fence for recording its outcome.
    pub attempts: i32,
    /// `retry.max_age` counts from here.
    pub created_at: DateTime<Utc>,
    pub subject: RunSubject,
}

/// What the claiming statements return.
#[derive(sqlx::FromRow)]
struct ClaimedRow {
    id: i64,
    attempts: i32,
    created_at: DateTime<Utc>,
    subject_kind: String,
    notification_id: Option<i64>,
    subject: Option<String>,
}

const CLAIMED_COLUMNS: &str = "id, attempts, created_at, subject_kind, notification_id, subject";

fn claimed(rows: Vec<ClaimedRow>) -> Result<Vec<Claimed>, StoreError> {
    rows.into_iter()
        .map(|r| {
            Ok(Claimed {
                subject: RunSubject::from_columns(
                    &r.subject_kind,
                    r.notification_id,
                    r.subject.as_deref(),
                )?,
                id: r.id,
                attempts: r.attempts,
                created_at: r.created_at,
            })
        })
        .collect()
}

/// The pending runs of one action, for the outbox gauges.
#[derive(Debug, Clone, Copy, Default, sqlx::FromRow)]
pub struct PendingRuns {
    pub count: i64,
    /// When the oldest of them was created.
    pub oldest: Option<DateTime<Utc>>,
}

/// How an execution ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    Done,
    /// Due again at `at`.
    Retry {
        at: DateTime<Utc>,
        error: String,
    },
    /// Given up: the dead letter keeps the error.
    Failed {
        error: String,
    },
}

const RUN_SELECT: &str = "\
SELECT r.id, r.subject_kind, r.notification_id, r.subject, r.action, r.status, r.attempts, \
    r.created_at, r.next_attempt_at, r.last_error, r.finished_at, n.receipt, n.transaction_type \
FROM action_runs r LEFT JOIN notifications n ON n.id = r.notification_id";

/// A JSON array of already-JSON items: one bind for a whole list, so a
/// statement's text (and its prepared form) does not vary with the length.
fn json_list(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    format!("[{}]", items.join(","))
}

impl Store {
    /// `id` is one of the JSON array of ids bound at `param`. Postgres
    /// reads it as an array (`[1,2]` becomes `{1,2}`), so its plan is a
    /// primary-key lookup per id.
    fn id_in(&self, param: &str) -> String {
        match self {
            Store::Postgres(_) => {
                format!("id = ANY(CAST(translate({param}, '[]', '{{}}') AS int8[]))")
            }
            Store::Sqlite(_) => format!("id IN (SELECT value FROM json_each({param}))"),
        }
    }

    /// `(id, attempts)` is one of the JSON array of `[id, attempts]` pairs
    /// bound at `pairs`, whose ids are the JSON array bound at `ids`.
    fn pair_in(&self, ids: &str, pairs: &str) -> String {
        let pair = match self {
            Store::Postgres(_) => format!(
                "SELECT CAST(e->>0 AS int8), CAST(e->>1 AS int4) \
                 FROM jsonb_array_elements(CAST({pairs} AS jsonb)) AS e"
            ),
            Store::Sqlite(_) => format!(
                "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each({pairs})"
            ),
        };
        format!("{} AND (id, attempts) IN ({pair})", self.id_in(ids))
    }

    /// Claims, in one statement, those of `ids` that are pending and due
    /// (the fast path from the channel). Returns (id, new attempt number) of
    /// each claimed; the others were taken by another process or task.
    pub async fn claim_runs(
        &self,
        ids: &[i64],
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<Claimed>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "UPDATE action_runs SET status = 'running', attempts = attempts + 1, lease_until = $1 \
             WHERE status = 'pending' AND next_attempt_at <= $2 AND {} \
             RETURNING {CLAIMED_COLUMNS}",
            self.id_in("$3")
        );
        let ids = json_list(ids.iter().map(|id| id.to_string()));
        relaxed_tx!(self, tx => claimed(sqlx::query_as(&sql)
            .bind(lease_until)
            .bind(now)
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?))
    }

    /// Claims up to `limit` runs of `action` that are due, or whose lease
    /// has expired (their process died). Postgres skips rows another
    /// process is claiming, so several daemons can share one database.
    pub async fn claim_due(
        &self,
        action: &str,
        limit: i64,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<Claimed>, StoreError> {
        let lock = match self {
            Store::Postgres(_) => "FOR UPDATE SKIP LOCKED",
            // One process, and a write transaction locks the whole database.
            Store::Sqlite(_) => "",
        };
        let sql = format!(
            "UPDATE action_runs SET status = 'running', attempts = attempts + 1, lease_until = $4 \
             WHERE id IN (SELECT id FROM action_runs WHERE action = $1 \
                 AND status IN ('pending', 'running') AND next_attempt_at <= $3 \
                 AND (status = 'pending' OR lease_until < $3) \
                 ORDER BY next_attempt_at LIMIT $2 {lock}) \
             RETURNING {CLAIMED_COLUMNS}"
        );
        relaxed_tx!(self, tx => claimed(sqlx::query_as(&sql)
            .bind(action)
            .bind(limit)
            .bind(now)
            .bind(lease_until)
            .fetch_all(&mut *tx)
            .await?))
    }

    /// Records how runs ended, in one transaction: `(id, attempts, outcome)`.
    /// A run that is no longer that attempt's (its lease expired and it was
    /// taken over) is left alone; the count of those is returned.
    pub async fn finish_runs(
        &self,
        finished: &[(i64, i32, RunOutcome)],
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let mut applied = 0u64;
        let done: Vec<(i64, i32)> = finished
            .iter()
            .filter(|(_, _, o)| *o == RunOutcome::Done)
            .map(|(id, attempts, _)| (*id, *attempts))
            .collect();
        let done = (!done.is_empty()).then(|| {
            (
                json_list(done.iter().map(|(id, _)| id.to_string())),
                json_list(done.iter().map(|(id, a)| format!("[{id},{a}]"))),
            )
        });
        let done_sql = format!(
            "UPDATE action_runs SET status = 'done', lease_until = NULL, finished_at = $1 \
             WHERE status = 'running' AND {}",
            self.pair_in("$2", "$3")
        );
        relaxed_tx!(self, tx => {
            if let Some((ids, pairs)) = &done {
                // The common case, one statement for the lot.
                applied += sqlx::query(&done_sql)
                    .bind(now)
                    .bind(ids)
                    .bind(pairs)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            for (id, attempts, outcome) in finished {
                let (status, next, error, finished_at) = match outcome {
                    RunOutcome::Done => continue,
                    RunOutcome::Retry { at, error } => ("pending", Some(*at), error.as_str(), None),
                    RunOutcome::Failed { error } => ("failed", None, error.as_str(), Some(now)),
                };
                applied += sqlx::query(
                    "UPDATE action_runs SET status = $3, next_attempt_at = COALESCE($4, next_attempt_at), \
                         last_error = $5, finished_at = $6, lease_until = NULL \
                     WHERE id = $1 AND attempts = $2 AND status = 'running'",
                )
                .bind(id)
                .bind(attempts)
                .bind(status)
                .bind(next)
                .bind(error)
                .bind(finished_at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
        });
        Ok(finished
            .len()
            .saturating_sub(usize::try_from(applied).unwrap_or(usize::MAX)))
    }

    /// Puts runs this process claimed but will not execute (shutdown) back
    /// to pending, due now, so the next start does not wait for their lease.
    pub async fn release_run(&self, id: i64, attempts: i32) -> Result<(), StoreError> {
        relaxed_tx!(self, tx => {
            sqlx::query(
                "UPDATE action_runs SET status = 'pending', lease_until = NULL \
                 WHERE id = $1 AND attempts = $2 AND status = 'running'",
            )
            .bind(id)
            .bind(attempts)
            .execute(&mut *tx)
            .await?;
            Ok(())
        })
    }

    /// The pending runs of `action`: a range of the `(action, status, …)`
    /// index, so its cost follows the pending runs, not the table (done
    /// runs are kept forever). Run at each scrape of `/metrics`.
    pub async fn pending_runs(&self, action: &str) -> Result<PendingRuns, StoreError> {
        let sql = "SELECT COUNT(*) AS count, MIN(created_at) AS oldest \
                   FROM action_runs WHERE action = $1 AND status = 'pending'";
        on_pool!(self, pool => Ok(sqlx::query_as(sql).bind(action).fetch_one(pool).await?))
    }

    /// Runs, newest first, optionally of one status and one action.
    pub async fn list_runs(
        &self,
        status: Option<RunStatus>,
        action: Option<&str>,
        limit: i64,
    ) -> Result<Vec<RunRow>, StoreError> {
        let sql = format!(
            "{RUN_SELECT} WHERE ($1 IS NULL OR r.status = $1) AND ($2 IS NULL OR r.action = $2) \
             ORDER BY r.id DESC LIMIT $3"
        );
        on_pool!(self, pool => Ok(sqlx::query_as(&sql)
            .bind(status.map(RunStatus::as_str))
            .bind(action)
            .bind(limit)
            .fetch_all(pool)
            .await?))
    }

    /// One run.
    pub async fn run(&self, id: i64) -> Result<Option<RunRow>, StoreError> {
        let sql = format!("{RUN_SELECT} WHERE r.id = $1");
        on_pool!(self, pool => Ok(sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?))
    }

    /// The runs of one notification, oldest first.
    pub async fn runs_of_notification(&self, id: i64) -> Result<Vec<RunRow>, StoreError> {
        let sql = format!("{RUN_SELECT} WHERE r.notification_id = $1 ORDER BY r.id");
        on_pool!(self, pool => Ok(sqlx::query_as(&sql).bind(id).fetch_all(pool).await?))
    }

    /// Runs per (action, status), for the Actions page.
    pub async fn run_counts(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT action, status, CAST(COUNT(*) AS BIGINT) FROM action_runs GROUP BY action, status ORDER BY action, status",
        )
        .fetch_all(pool)
        .await?))
    }

    /// Makes failed (or any finished or pending) runs due now again, with a
    /// fresh attempt budget. Running ones are left to their process.
    pub async fn retry_runs(&self, ids: &[i64], now: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut n = 0;
        for id in ids {
            n += on_pool!(self, pool => sqlx::query(
                "UPDATE action_runs SET status = 'pending', attempts = 0, next_attempt_at = $2, \
                     finished_at = NULL, created_at = $2 \
                 WHERE id = $1 AND status <> 'running'",
            )
            .bind(id)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected());
        }
        Ok(n)
    }

    /// Every failed run (of one action, if given) due now again.
    pub async fn retry_failed(
        &self,
        action: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        on_pool!(self, pool => Ok(sqlx::query(
            "UPDATE action_runs SET status = 'pending', attempts = 0, next_attempt_at = $2, \
                 finished_at = NULL, created_at = $2 \
             WHERE status = 'failed' AND ($1 IS NULL OR action = $1)",
        )
        .bind(action)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected()))
    }

    /// New runs of `action` for stored notifications (`kaching replay`).
    pub async fn create_runs(
        &self,
        notification_ids: &[i64],
        action: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<i64>, StoreError> {
        let mut runs = Vec::with_capacity(notification_ids.len());
        for id in notification_ids {
            runs.push(
                self.enqueue_run(&RunSubject::Notification(*id), action, now)
                    .await?,
            );
        }
        Ok(runs)
    }

    /// A new run of `action` about `subject`, due now, committed durably
    /// (work that would otherwise be lost). Notifications get theirs with
    /// the notification itself (`record_batch`); this is for the others
    /// (alerts) and for replays. The running dispatcher finds it when it
    /// next polls.
    pub async fn enqueue_run(
        &self,
        subject: &RunSubject,
        action: &str,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        const INSERT: &str = "INSERT INTO action_runs \
                (subject_kind, notification_id, subject, action, created_at, next_attempt_at) \
            VALUES ($1, $2, $3, $4, $5, $5) RETURNING id";
        let (notification_id, json) = subject.columns();
        // One statement, written once, run on either backend's pool.
        macro_rules! insert {
            ($pool:expr) => {
                sqlx::query_scalar(INSERT)
                    .bind(subject.kind())
                    .bind(notification_id)
                    .bind(json.as_deref().map(text))
                    .bind(action)
                    .bind(now)
                    .fetch_one($pool)
                    .await?
            };
        }
        Ok(match self {
            Store::Postgres(s) => insert!(s.pool()),
            Store::Sqlite(s) => {
                let _write = s.write_lock().await;
                insert!(s.pool())
            }
        })
    }
}
