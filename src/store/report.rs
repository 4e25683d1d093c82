//! The report tables (migration 0005): what the projector writes and the
//! dashboard reads. The projector (`crate::report`) decides what a
//! notification means; this file only moves rows. Every write of one pass
//! is one relaxed transaction (the tables are derived: a crash loses at
//! most a pass, which the next pass redoes, because a notification's facts
//! row and its sums are written together).

use chrono::{DateTime, Utc};

use super::{
    on_pool, relaxed_tx, text, Firing, HourRow, NotificationRow, SchemaPath, Store, StoreError,
    StoredNotification, NOTIFICATION_SELECT,
};

/// Daily sums' counters, in the column order of `report_daily`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct Counters {
    pub sales: i64,
    pub rebills: i64,
    pub gross_micros: i64,
    pub refunds: i64,
    pub refund_micros: i64,
    pub chargebacks: i64,
    pub chargeback_micros: i64,
    pub cancels: i64,
    pub uncancels: i64,
    pub cohort_refunds: i64,
    pub cohort_chargebacks: i64,
}

/// The counters' columns, one list for the upsert and every SUM.
const COUNTERS: [&str; 11] = [
    "sales",
    "rebills",
    "gross_micros",
    "refunds",
    "refund_micros",
    "chargebacks",
    "chargeback_micros",
    "cancels",
    "uncancels",
    "cohort_refunds",
    "cohort_chargebacks",
];

impl Counters {
    fn values(&self) -> [i64; 11] {
        [
            self.sales,
            self.rebills,
            self.gross_micros,
            self.refunds,
            self.refund_micros,
            self.chargebacks,
            self.chargeback_micros,
            self.cancels,
            self.uncancels,
            self.cohort_refunds,
            self.cohort_chargebacks,
        ]
    }

    pub fn add(&mut self, o: &Counters) {
        self.sales += o.sales;
        self.rebills += o.rebills;
        self.gross_micros += o.gross_micros;
        self.refunds += o.refunds;
        self.refund_micros += o.refund_micros;
        self.chargebacks += o.chargebacks;
        self.chargeback_micros += o.chargeback_micros;
        self.cancels += o.cancels;
        self.uncancels += o.uncancels;
        self.cohort_refunds += o.cohort_refunds;
        self.cohort_chargebacks += o.cohort_chargebacks;
    }
}

/// The key of a `report_daily` row.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DailyKey {
    pub dim: String,
    pub day: String,
    pub account: String,
    pub currency: String,
    pub value: String,
}

/// One projected notification's `report_facts` row.
#[derive(Debug, Clone)]
pub struct FactRow {
    pub notification_id: i64,
    pub account: String,
    pub receipt: String,
    pub day: String,
    pub kind: &'static str,
    pub currency: String,
    pub micros: i64,
    pub sale_receipt: String,
    pub payment_method: Option<String>,
    pub country: Option<String>,
    /// JSON, see the column comment.
    pub dims: String,
    pub tracking: String,
}

/// A change to a subscription, applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionChange {
    Start {
        account: String,
        receipt: String,
        item_no: String,
        title: String,
        currency: String,
        day: String,
    },
    Rebill {
        account: String,
        receipt: String,
        day: String,
    },
    Cancel {
        account: String,
        receipt: String,
        day: String,
    },
    Uncancel {
        account: String,
        receipt: String,
    },
    Refund {
        account: String,
        receipt: String,
        day: String,
    },
}

/// Everything one projector pass writes.
#[derive(Debug, Default)]
pub struct Projection {
    pub facts: Vec<FactRow>,
    pub daily: Vec<(DailyKey, Counters, String)>,
    pub subscriptions: Vec<SubscriptionChange>,
    /// What to add to `report_hourly`.
    pub hourly: Vec<HourRow>,
    /// schema_drift's paths: `seen` to add, `kinds` as they are now.
    pub schema: Vec<SchemaPath>,
    /// Alerts the batch fired (chargebacks, schema changes), delivered by
    /// runs written in the same transaction.
    pub alerts: Vec<Firing>,
    /// The new watermark: every committed notification up to it is projected.
    pub watermark: Option<i64>,
}

/// What a reversal's sale looked like, for its cohort.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SaleFacts {
    pub day: String,
    pub currency: String,
    pub dims: String,
}

/// Adds an hour's counts; the latest times win.
const HOURLY_UPSERT: &str = "INSERT INTO report_hourly \
        (account, hour, sales, tests, others, last_sale_at, last_test_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7) \
    ON CONFLICT (account, hour) DO UPDATE SET \
        sales = report_hourly.sales + excluded.sales, \
        tests = report_hourly.tests + excluded.tests, \
        others = report_hourly.others + excluded.others, \
        last_sale_at = CASE WHEN report_hourly.last_sale_at IS NULL \
            OR excluded.last_sale_at > report_hourly.last_sale_at \
            THEN COALESCE(excluded.last_sale_at, report_hourly.last_sale_at) \
            ELSE report_hourly.last_sale_at END, \
        last_test_at = CASE WHEN report_hourly.last_test_at IS NULL \
            OR excluded.last_test_at > report_hourly.last_test_at \
            THEN COALESCE(excluded.last_test_at, report_hourly.last_test_at) \
            ELSE report_hourly.last_test_at END";

/// Adds to a learned path's count and sets its kinds.
const SCHEMA_UPSERT: &str = "INSERT INTO schema_paths \
        (account, version, transaction_type, path, kinds, seen) VALUES ($1, $2, $3, $4, $5, $6) \
    ON CONFLICT (account, version, transaction_type, path) DO UPDATE SET \
        seen = schema_paths.seen + excluded.seen, kinds = excluded.kinds";

/// Rows per multi-row statement (up to 17 parameters each). Small: SQLite
/// finds each parameter by name through a list, so binding costs the
/// square of the parameters per statement (at 400 rows it was half of a
/// backfill's time).
const CHUNK: usize = 24;

impl Store {
    /// The watermark and the highest notification id.
    pub async fn report_position(&self) -> Result<(i64, i64), StoreError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT (SELECT last_id FROM report_state WHERE id = 1), \
                    COALESCE((SELECT MAX(id) FROM notifications), 0)",
        )
        .fetch_one(pool)
        .await?))
    }

    /// Committed notifications above the watermark with no facts row yet,
    /// oldest first: the projector's next work. The range above the
    /// watermark is short (see `crate::report::project`), so the anti-join
    /// is a few index probes.
    pub async fn unprojected(
        &self,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<StoredNotification>, StoreError> {
        let sql = format!(
            "{NOTIFICATION_SELECT} n WHERE n.id > $1 AND NOT EXISTS \
             (SELECT 1 FROM report_facts f WHERE f.notification_id = n.id) ORDER BY n.id LIMIT $2"
        );
        let rows: Vec<NotificationRow> = on_pool!(self, pool => sqlx::query_as(&sql)
            .bind(after_id)
            .bind(limit)
            .fetch_all(pool)
            .await?);
        rows.into_iter().map(StoredNotification::try_from).collect()
    }

    /// The sale (or rebill) with this exact receipt, for a reversal's cohort.
    pub async fn sale_facts(
        &self,
        account: &str,
        receipt: &str,
    ) -> Result<Option<SaleFacts>, StoreError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT day, currency, dims FROM report_facts \
             WHERE account = $1 AND receipt = $2 AND kind IN ('sale', 'rebill') \
             ORDER BY notification_id LIMIT 1",
        )
        .bind(account)
        .bind(receipt)
        .fetch_optional(pool)
        .await?))
    }

    /// Writes one pass in one transaction. A facts row that exists already
    /// (another process projected it) fails the whole pass, so no sum is
    /// ever added twice.
    /// Writes a pass's projection in one transaction; returns the ids of
    /// the alerts it fired.
    pub async fn apply_projection(&self, p: &Projection) -> Result<Vec<i64>, StoreError> {
        let upsert = daily_upsert_sql(CHUNK);
        let mut fired = Vec::new();
        relaxed_tx!(self, tx => {
            for chunk in p.facts.chunks(CHUNK) {
                let mut sql = String::from(
                    "INSERT INTO report_facts (notification_id, account, receipt, day, kind, currency, \
                     micros, sale_receipt, payment_method, country, dims, tracking) VALUES ",
                );
                push_placeholders(&mut sql, chunk.len(), 12);
                let mut q = sqlx::query(&sql);
                for f in chunk {
                    q = q
                        .bind(f.notification_id)
                        .bind(f.account.as_str())
                        .bind(f.receipt.as_str())
                        .bind(f.day.as_str())
                        .bind(f.kind)
                        .bind(text(&f.currency).into_owned())
                        .bind(f.micros)
                        .bind(f.sale_receipt.as_str())
                        .bind(f.payment_method.as_deref().map(|s| text(s).into_owned()))
                        .bind(f.country.as_deref().map(|s| text(s).into_owned()))
                        .bind(text(&f.dims).into_owned())
                        .bind(text(&f.tracking).into_owned());
                }
                q.execute(&mut *tx).await?;
            }
            for chunk in p.daily.chunks(CHUNK) {
                let sql = if chunk.len() == CHUNK { upsert.clone() } else { daily_upsert_sql(chunk.len()) };
                let mut q = sqlx::query(&sql);
                for (k, c, label) in chunk {
                    q = q
                        .bind(k.dim.as_str())
                        .bind(k.day.as_str())
                        .bind(k.account.as_str())
                        .bind(text(&k.currency).into_owned())
                        .bind(text(&k.value).into_owned())
                        .bind(text(label).into_owned());
                    for v in c.values() {
                        q = q.bind(v);
                    }
                }
                q.execute(&mut *tx).await?;
            }
            for change in &p.subscriptions {
                let (sql, args) = subscription_sql(change);
                let mut q = sqlx::query(sql);
                for a in args {
                    q = q.bind(text(a).into_owned());
                }
                q.execute(&mut *tx).await?;
            }
            for h in &p.hourly {
                sqlx::query(HOURLY_UPSERT)
                    .bind(h.account.as_str())
                    .bind(h.hour.as_str())
                    .bind(h.sales)
                    .bind(h.tests)
                    .bind(h.others)
                    .bind(h.last_sale_at)
                    .bind(h.last_test_at)
                    .execute(&mut *tx)
                    .await?;
            }
            for path in &p.schema {
                sqlx::query(SCHEMA_UPSERT)
                    .bind(path.account.as_str())
                    .bind(text(&path.version).into_owned())
                    .bind(text(&path.transaction_type).into_owned())
                    .bind(text(&path.path).into_owned())
                    .bind(path.kinds.as_str())
                    .bind(path.seen)
                    .execute(&mut *tx)
                    .await?;
            }
            let now = chrono::Utc::now();
            for firing in &p.alerts {
                if let Some((id, _)) = super::alerts::fire_in!(tx, firing, now) {
                    fired.push(id);
                }
            }
            if let Some(w) = p.watermark {
                sqlx::query(
                    "UPDATE report_state SET last_id = CASE WHEN last_id < $1 THEN $1 ELSE last_id END \
                     WHERE id = 1",
                )
                .bind(w)
                .execute(&mut *tx)
                .await?;
            }
        });
        Ok(fired)
    }

    /// Empties the report tables and rewinds the watermark: the projector
    /// then derives them again from every stored notification.
    pub async fn clear_reports(&self) -> Result<(), StoreError> {
        relaxed_tx!(self, tx => {
            for sql in [
                "DELETE FROM report_facts",
                "DELETE FROM report_daily",
                "DELETE FROM report_subscriptions",
                "DELETE FROM report_hourly",
                "UPDATE report_state SET last_id = 0",
            ] {
                sqlx::query(sql).execute(&mut *tx).await?;
            }
        });
        Ok(())
    }

    /// Sums of `dim` over `[from, to]` (days as `YYYY-MM-DD`), grouped by
    /// value and currency (`by_day`: by day and currency, for `value` or
    /// every value). `account` `None` is every account.
    pub async fn daily_sums(&self, q: &SumQuery<'_>) -> Result<Vec<SumRow>, StoreError> {
        let sums: Vec<String> = COUNTERS
            .iter()
            .map(|c| format!("CAST(SUM({c}) AS BIGINT) AS {c}"))
            .collect();
        let (group, select) = if q.by_day {
            ("day, currency", "day AS key, currency, '' AS label")
        } else {
            (
                "value, currency",
                "value AS key, currency, MAX(label) AS label",
            )
        };
        let sql = format!(
            "SELECT {select}, {} FROM report_daily \
             WHERE dim = $1 AND day >= $2 AND day <= $3 AND ($4 IS NULL OR account = $4) \
               AND ($5 IS NULL OR value = $5) \
             GROUP BY {group} ORDER BY {group}",
            sums.join(", ")
        );
        on_pool!(self, pool => Ok(sqlx::query_as(&sql)
            .bind(q.dim)
            .bind(q.from.as_str())
            .bind(q.to.as_str())
            .bind(q.account)
            .bind(q.value)
            .fetch_all(pool)
            .await?))
    }

    /// The accounts with anything in the reports.
    pub async fn report_accounts(&self) -> Result<Vec<String>, StoreError> {
        on_pool!(self, pool => Ok(sqlx::query_scalar(
            "SELECT DISTINCT account FROM report_daily WHERE dim = 'all' ORDER BY account",
        )
        .fetch_all(pool)
        .await?))
    }

    /// Subscriptions by month of their first sale: started, still active,
    /// cancelled, refunded, and how many had at least 1…6 rebills.
    pub async fn subscription_cohorts(
        &self,
        account: Option<&str>,
    ) -> Result<Vec<CohortRow>, StoreError> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT SUBSTR(started_day, 1, 7) AS month, item_no, MAX(title) AS title, \
                 CAST(COUNT(*) AS BIGINT) AS started, \
                 CAST(SUM(CASE WHEN status = 'active' THEN 1 ELSE 0 END) AS BIGINT) AS active, \
                 CAST(SUM(CASE WHEN status = 'cancelled' THEN 1 ELSE 0 END) AS BIGINT) AS cancelled, \
                 CAST(SUM(CASE WHEN status = 'refunded' THEN 1 ELSE 0 END) AS BIGINT) AS refunded, \
                 CAST(SUM(CASE WHEN rebills >= 1 THEN 1 ELSE 0 END) AS BIGINT) AS rebilled1, \
                 CAST(SUM(CASE WHEN rebills >= 2 THEN 1 ELSE 0 END) AS BIGINT) AS rebilled2, \
                 CAST(SUM(CASE WHEN rebills >= 3 THEN 1 ELSE 0 END) AS BIGINT) AS rebilled3, \
                 CAST(SUM(CASE WHEN rebills >= 6 THEN 1 ELSE 0 END) AS BIGINT) AS rebilled6 \
             FROM report_subscriptions WHERE ($1 IS NULL OR account = $1) \
             GROUP BY SUBSTR(started_day, 1, 7), item_no ORDER BY 1, 2",
        )
        .bind(account)
        .fetch_all(pool)
        .await?))
    }

    /// Notifications, newest first (by day when a range is given), filtered;
    /// `before_id` pages. The SQL holds only the filters given, so that each
    /// backend's planner can use the index that fits (receipt, sale
    /// receipt, day).
    pub async fn find_notifications(
        &self,
        f: &NotificationFilter<'_>,
    ) -> Result<Vec<ListedNotification>, StoreError> {
        let mut binds: Vec<String> = Vec::new();
        let mut bind = |v: String| {
            binds.push(v);
            format!("${}", binds.len())
        };
        let mut cond: Vec<String> = Vec::new();
        if let Some(r) = f.receipt {
            let (a, b) = (bind(r.to_owned()), bind(r.to_owned()));
            cond.push(format!("(f.receipt = {a} OR f.sale_receipt = {b})"));
        }
        if let Some(k) = f.kind {
            cond.push(format!("n.transaction_type = {}", bind(k.to_owned())));
        }
        if let Some(a) = f.account {
            cond.push(format!("n.account = {}", bind(a.to_owned())));
        }
        if let Some(from) = &f.from {
            cond.push(format!("f.day >= {}", bind(from.clone())));
        }
        if let Some(to) = &f.to {
            cond.push(format!("f.day <= {}", bind(to.clone())));
        }
        if let Some((dim, value)) = f.dim {
            let needle = serde_json::json!({ "dim": dim, "value": value }).to_string();
            // `{"dim":"tid","value":"x"}` appears in `dims` as `{"dim":"tid","value":"x",…`.
            let needle = format!("%{},%", like_escape(needle.trim_end_matches('}')));
            cond.push(format!("f.dims LIKE {} ESCAPE '\\'", bind(needle)));
        }
        // A range lists by day, newest first, then by id: an index range
        // that stops after a page, however many notifications the range has.
        let by_day = f.from.is_some() || f.to.is_some();
        let before = f.before_id.inspect(|_| {
            let at = binds.len() + 1;
            cond.push(if by_day {
                format!(
                    "(f.day < (SELECT day FROM report_facts WHERE notification_id = ${at}) \
                     OR (f.day = (SELECT day FROM report_facts WHERE notification_id = ${at}) \
                         AND f.notification_id < ${at}))"
                )
            } else {
                format!("f.notification_id < ${at}")
            });
        });
        let filtered = !cond.is_empty();
        let mut sql = String::from(
            "SELECT n.id, n.account, n.receipt, n.transaction_type, n.transaction_time, \
                n.affiliate, CAST(n.total_account_amount AS TEXT) AS amount, n.currency, n.duplicates, \
                n.refund_risk, f.dims AS dims ",
        );
        // Filtered: only projected notifications can match (a read projects first).
        sql += if filtered {
            "FROM report_facts f JOIN notifications n ON n.id = f.notification_id"
        } else {
            "FROM notifications n LEFT JOIN report_facts f ON f.notification_id = n.id"
        };
        if filtered {
            sql += " WHERE ";
            sql += &cond.join(" AND ");
        }
        let order = if by_day {
            "f.day DESC, f.notification_id DESC"
        } else if filtered {
            "f.notification_id DESC"
        } else {
            "n.id DESC"
        };
        let limit_at = binds.len() + usize::from(before.is_some()) + 1;
        sql += &format!(" ORDER BY {order} LIMIT ${limit_at}");
        on_pool!(self, pool => {
            let mut q = sqlx::query_as(&sql);
            for b in &binds {
                q = q.bind(text(b).into_owned());
            }
            if let Some(id) = before {
                q = q.bind(id);
            }
            Ok(q.bind(f.limit).fetch_all(pool).await?)
        })
    }
}

/// What [`Store::daily_sums`] sums.
#[derive(Debug, Clone)]
pub struct SumQuery<'a> {
    pub dim: &'a str,
    pub from: String,
    pub to: String,
    pub account: Option<&'a str>,
    pub value: Option<&'a str>,
    pub by_day: bool,
}

/// One group of [`Store::daily_sums`]: a value (or a day) in one currency.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SumRow {
    pub key: String,
    pub currency: String,
    pub label: String,
    #[sqlx(flatten)]
    pub counters: Counters,
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct CohortRow {
    pub month: String,
    pub item_no: String,
    pub title: String,
    pub started: i64,
    pub active: i64,
    pub cancelled: i64,
    pub refunded: i64,
    pub rebilled1: i64,
    pub rebilled2: i64,
    pub rebilled3: i64,
    pub rebilled6: i64,
}

/// The notification list's filters; `None` is any.
#[derive(Debug, Clone, Default)]
pub struct NotificationFilter<'a> {
    /// The receipt, or the sale receipt of its rebills and refunds.
    pub receipt: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub account: Option<&'a str>,
    pub from: Option<String>,
    pub to: Option<String>,
    /// A breakdown value: (`product`, `"3"`), (`tid`, `"fb-1"`)…
    pub dim: Option<(&'a str, &'a str)>,
    pub before_id: Option<i64>,
    pub limit: i64,
}

/// A row of the notification list: no customer data.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct ListedNotification {
    pub id: i64,
    pub account: String,
    pub receipt: String,
    pub transaction_type: String,
    pub transaction_time: DateTime<Utc>,
    pub affiliate: Option<String>,
    pub amount: Option<String>,
    pub currency: Option<String>,
    pub duplicates: i64,
    /// A sale's refund-risk score at receipt.
    pub refund_risk: Option<f64>,
    #[serde(skip)]
    pub dims: Option<String>,
}

fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// `($1, $2, …), (…)` for `rows` rows of `cols` parameters.
fn push_placeholders(sql: &mut String, rows: usize, cols: usize) {
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..cols {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", r * cols + c + 1));
        }
        sql.push(')');
    }
}

/// The multi-row upsert of `rows` daily sums: new rows inserted, existing
/// ones incremented, the label kept current.
fn daily_upsert_sql(rows: usize) -> String {
    let mut sql = format!(
        "INSERT INTO report_daily (dim, day, account, currency, value, label, {}) VALUES ",
        COUNTERS.join(", ")
    );
    push_placeholders(&mut sql, rows, 6 + COUNTERS.len());
    sql.push_str(
        " ON CONFLICT (dim, day, account, currency, value) DO UPDATE SET label = excluded.label",
    );
    for c in COUNTERS {
        sql.push_str(&format!(", {c} = report_daily.{c} + excluded.{c}"));
    }
    sql
}

/// The statement of one subscription change and its parameters.
fn subscription_sql(change: &SubscriptionChange) -> (&'static str, Vec<&str>) {
    use SubscriptionChange::*;
    match change {
        Start { account, receipt, item_no, title, currency, day } => (
            "INSERT INTO report_subscriptions \
                 (account, receipt, item_no, title, currency, started_day, rebills, last_day, status) \
             VALUES ($1, $2, $3, $4, $5, $6, 0, $6, 'active') ON CONFLICT (account, receipt) DO NOTHING",
            vec![account, receipt, item_no, title, currency, day],
        ),
        Rebill { account, receipt, day } => (
            "UPDATE report_subscriptions SET rebills = rebills + 1, \
                 last_day = CASE WHEN last_day < $3 THEN $3 ELSE last_day END \
             WHERE account = $1 AND receipt = $2",
            vec![account, receipt, day],
        ),
        Cancel { account, receipt, day } => (
            "UPDATE report_subscriptions SET status = 'cancelled', ended_day = $3 \
             WHERE account = $1 AND receipt = $2 AND status = 'active'",
            vec![account, receipt, day],
        ),
        Uncancel { account, receipt } => (
            "UPDATE report_subscriptions SET status = 'active', ended_day = NULL \
             WHERE account = $1 AND receipt = $2 AND status = 'cancelled'",
            vec![account, receipt],
        ),
        Refund { account, receipt, day } => (
            "UPDATE report_subscriptions SET status = 'refunded', ended_day = $3 \
             WHERE account = $1 AND receipt = $2",
            vec![account, receipt, day],
        ),
    }
}
