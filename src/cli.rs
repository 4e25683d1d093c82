//! The command line: `serve`, `migrate`, `check-config`, `encrypt`,
//! `decrypt`, `notifications`, `rejected list|reprocess`, `actions`, `replay`,
//! `reconcile`, `admin hash-password`, `report backfill|rebuild`, `demo`.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};

use chrono::{DateTime, Utc};

use crate::actions::Actions;
use crate::app::{open_store, App};
use crate::config::Settings;
use crate::ins::TransactionType;
use crate::runtime::Runtime;
use crate::store::RunStatus;
use crate::{demo, ins, rejected, shutdown, telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "kaching",
    version,
    about = "A ClickBank Instant Notification (INS) receiver"
)]
pub struct Cli {
    /// Configuration file (default: config/kaching.toml when present).
    #[arg(long, global = true, env = "KACHING_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the receiver (migrates the database first).
    Serve,
    /// Ask the running daemon on this host whether it is up (GET /healthz on
    /// the INS listener); with --ready, whether its store takes commits
    /// (GET /readyz). Exit status 0 when it is. For container health checks.
    Health {
        #[arg(long)]
        ready: bool,
    },
    /// Check what is commonly wrong (configuration, database, keys,
    /// certificate, listen address, clock, file permissions, action
    /// targets) and say how to fix each. Exit status 1 on any problem.
    Doctor,
    /// Apply the database migrations and exit.
    Migrate,
    /// Load and validate the configuration, print it with secrets redacted.
    CheckConfig,
    /// Encrypt a plaintext notification into the body ClickBank would POST.
    Encrypt {
        #[arg(long, env = "KACHING_SECRET_KEY", hide_env_values = true)]
        secret_key: String,
        /// The plaintext JSON (a file, or - for standard input).
        #[arg(default_value = "-")]
        input: PathBuf,
    },
    /// Print the plaintext of a captured v6+ body.
    Decrypt {
        #[arg(long, env = "KACHING_SECRET_KEY", hide_env_values = true)]
        secret_key: String,
        /// The captured body (a file, or - for standard input).
        #[arg(default_value = "-")]
        input: PathBuf,
    },
    /// List the most recent stored notifications.
    Notifications {
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Posts that failed authentication.
    Rejected {
        #[command(subcommand)]
        command: RejectedCommand,
    },
    /// Follow-up action runs.
    Actions {
        #[command(subcommand)]
        command: ActionsCommand,
    },
    /// Alerts the [[alerts]] rules fired.
    Alerts {
        #[command(subcommand)]
        command: AlertsCommand,
    },
    /// The data keys that seal customer data.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Find a buyer's notifications by email (through the blind index).
    Customers {
        #[command(subcommand)]
        command: CustomersCommand,
    },
    /// Erase one buyer's personal data (GDPR Art. 17): the financial record
    /// and the dedup key stay.
    Erase {
        #[arg(long)]
        email: String,
    },
    /// The refund-risk model.
    Risk {
        #[command(subcommand)]
        command: RiskCommand,
    },
    /// Create new runs of an action for stored notifications (for example
    /// after adding the action). The running daemon executes them.
    Replay {
        /// The action to run.
        #[arg(long)]
        action: String,
        /// Transaction time from (RFC 3339, or a date: 2026-11-01).
        #[arg(long, value_parser = parse_time)]
        since: DateTime<Utc>,
        /// Transaction time until, exclusive (default: now).
        #[arg(long, value_parser = parse_time)]
        until: Option<DateTime<Utc>>,
        /// Only this transaction type (the action's own filter applies too).
        #[arg(long = "type", value_parser = TransactionType::parse)]
        kind: Option<TransactionType>,
    },
    /// Compare the stored notifications with ClickBank's Orders API and
    /// store what ClickBank has and kaching lacks (see [accounts.reconcile]).
    Reconcile {
        /// The account (it needs an [accounts.reconcile] block).
        #[arg(long)]
        account: String,
        /// The first day (ClickBank's day, US Pacific): 2026-11-01.
        #[arg(long)]
        since: chrono::NaiveDate,
        /// The last day, inclusive (default: today).
        #[arg(long)]
        until: Option<chrono::NaiveDate>,
        /// Compare and list what is missing; store nothing.
        #[arg(long)]
        dry_run: bool,
        /// The report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The dashboard's login.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// The report tables behind the dashboard and its API.
    Report {
        #[command(subcommand)]
        command: ReportCommand,
    },
    /// Write a realistic, seeded history of demo notifications (sales,
    /// rebills, refunds, chargebacks, cancellations, ClickBank retries) into
    /// the configured database, through the same pipeline as a real post.
    /// Configured actions do not run for them. The same seed and end store
    /// the same history: a second run stores nothing new.
    Demo {
        /// The account they are encrypted for (default: the first configured).
        #[arg(long)]
        account: Option<String>,
        /// Days of history.
        #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
        /// The random seed: the same seed gives the same history.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The last day (UTC), included (default: today, up to now).
        #[arg(long, value_parser = parse_date)]
        end: Option<chrono::NaiveDate>,
        /// Sales on an average weekday (a bigger shop: more).
        #[arg(long, default_value_t = demo::SALES_PER_DAY)]
        sales_per_day: f64,
    },
}

fn parse_date(s: &str) -> Result<chrono::NaiveDate, String> {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| format!("`{s}` is not a date (2026-11-30)"))
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Read a password from standard input and print its argon2id PHC
    /// string, for `admin.password_hash`.
    HashPassword,
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Count every stored notification that the reports have not counted
    /// yet (what a running daemon does by itself), and print how many.
    Backfill,
    /// Empty the report tables and count every stored notification again
    /// (after a fix to how notifications are read). Stop the daemon first.
    Rebuild,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a new data key (32 random bytes, base64) for privacy.data_key_file.
    Generate,
    /// Re-seal every row under the current key, in batches (the daemon may run).
    Rewrap,
}

#[derive(Debug, Subcommand)]
pub enum CustomersCommand {
    /// The notifications of the buyer with this email.
    Find {
        #[arg(long)]
        email: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RiskCommand {
    /// Fit a model on the matured sales, evaluate it on the newest of them,
    /// and store it: new sales are scored with it from then on.
    Train,
    /// Evaluate on a time-based holdout (train on older, test on newer)
    /// against the base rate and per-product rates; stores nothing.
    Evaluate,
}

#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// Show alerts, newest first: current and past.
    List {
        /// Only those still firing.
        #[arg(long)]
        firing: bool,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Evaluate every timer rule once, now, as the daemon does (what fires
    /// is delivered by the running daemon's dispatcher).
    Evaluate,
}

#[derive(Debug, Subcommand)]
pub enum ActionsCommand {
    /// Show runs, newest first.
    List {
        #[arg(long, value_enum)]
        status: Option<RunStatus>,
        #[arg(long)]
        action: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Make runs due again now with a fresh attempt budget: the given ids,
    /// or every failed one (of one action).
    Retry {
        ids: Vec<i64>,
        #[arg(long, conflicts_with = "ids")]
        failed: bool,
        #[arg(long, requires = "failed")]
        action: Option<String>,
    },
}

/// RFC 3339, or a plain date (midnight UTC).
fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| {
            format!("`{s}` is neither RFC 3339 (2026-11-01T00:00:00Z) nor a date (2026-11-01)")
        })
}

#[derive(Debug, Subcommand)]
pub enum RejectedCommand {
    /// Show the kept rejected posts, oldest first.
    List {
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Try them again with the current keys; store those that now pass.
    Reprocess,
}

fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read standard input")?;
        Ok(buf)
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

/// The settings, checked as far as they can be without building anything.
fn load(cli: &Cli) -> anyhow::Result<Settings> {
    let settings = Settings::load(cli.config.as_deref())?;
    settings.validate()?;
    Ok(settings)
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Encrypt { secret_key, input } => {
            let plaintext = read_input(input)?;
            let text = std::str::from_utf8(&plaintext).context("the plaintext is not UTF-8")?;
            serde_json::from_str::<serde_json::Value>(text).context("the plaintext is not JSON")?;
            println!(
                "{}",
                ins::encrypt(secret_key, text.trim().as_bytes(), ins::random_iv())
            );
            Ok(())
        }
        Command::Decrypt { secret_key, input } => {
            let body = read_input(input)?;
            let plaintext = ins::decrypt(secret_key, &body)
                .map_err(|e| anyhow::anyhow!("cannot decrypt: {e}"))?;
            println!("{plaintext}");
            Ok(())
        }
        Command::Health { ready } => {
            let settings = Settings::load(cli.config.as_deref())?;
            println!("{}", crate::doctor::health(&settings, *ready).await?);
            Ok(())
        }
        Command::Doctor => {
            let findings = crate::doctor::doctor(cli.config.as_deref()).await;
            let mut failed = 0;
            for f in &findings {
                let mark = match f.verdict {
                    crate::doctor::Verdict::Ok => "ok  ",
                    crate::doctor::Verdict::Warn => "warn",
                    crate::doctor::Verdict::Fail => {
                        failed += 1;
                        "FAIL"
                    }
                };
                println!("{mark}  {:<12} {}", f.check, f.detail);
                if let (Some(fix), false) = (&f.fix, f.verdict == crate::doctor::Verdict::Ok) {
                    println!("      {:<12} fix: {fix}", "");
                }
            }
            anyhow::ensure!(failed == 0, "{failed} problem(s) found");
            println!("no problems found");
            Ok(())
        }
        Command::CheckConfig => {
            // The very build `serve` and a reload do: they cannot disagree.
            let settings = Settings::load(cli.config.as_deref())?;
            Runtime::build(&settings)?;
            print!("{}", settings.to_redacted_toml());
            eprintln!("configuration is valid");
            Ok(())
        }
        Command::Serve => {
            // App::build validates, through the runtime's one build.
            let settings = Settings::load(cli.config.as_deref())?;
            telemetry::init(&settings.log);
            let app = App::build(&settings).await?;
            app.reloader().on_sighup(cli.config.clone());
            let listener = tokio::net::TcpListener::bind(settings.server.listen)
                .await
                .with_context(|| format!("cannot listen on {}", settings.server.listen))?;
            let admin = crate::app::bind_admin(&settings).await?;
            app.serve(listener, admin, shutdown::signal()).await
        }
        Command::Admin {
            command: AdminCommand::HashPassword,
        } => {
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .context("cannot read the password from standard input")?;
            let password = password.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!password.is_empty(), "the password is empty");
            let hash = crate::admin::hash_password(password)
                .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))?;
            println!("{hash}");
            Ok(())
        }
        Command::Report { command } => {
            let settings = load(&cli)?;
            telemetry::init(&settings.log);
            let store = open_store(&settings, true).await?;
            if matches!(command, ReportCommand::Rebuild) {
                store.clear_reports().await?;
            }
            let reports = crate::report::Reports::new(store.clone(), None);
            let started = std::time::Instant::now();
            let total = reports.backfill().await?;
            println!(
                "counted {total} notifications into the reports in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            store.close().await;
            Ok(())
        }
        Command::Migrate => {
            let settings = load(&cli)?;
            telemetry::init(&settings.log);
            let store = open_store(&settings, true).await?;
            store.close().await;
            println!("migrated the {} database", store.backend());
            Ok(())
        }
        Command::Notifications { limit } => {
            let settings = load(&cli)?;
            let store = open_store(&settings, false).await?;
            let rows = store.recent_notifications(*limit, None).await?;
            println!(
                "{:>6}  {:<20}  {:<12}  {:<14}  {:<16}  {:>10} {:<3}  {:>3}  {:>4}",
                "id", "transaction time", "account", "receipt", "type", "amount", "", "try", "dups"
            );
            for r in rows {
                println!(
                    "{:>6}  {:<20}  {:<12}  {:<14}  {:<16}  {:>10} {:<3}  {:>3}  {:>4}",
                    r.id,
                    r.notification.transaction_time.format("%Y-%m-%d %H:%M:%S"),
                    r.account,
                    r.notification.receipt,
                    r.notification.transaction_type,
                    r.notification
                        .total_account_amount
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                    r.notification.currency.unwrap_or_default(),
                    r.notification.attempt_count,
                    r.duplicates,
                );
            }
            store.close().await;
            Ok(())
        }
        Command::Alerts { command } => {
            let settings = load(&cli)?;
            let store = open_store(&settings, true).await?;
            match command {
                AlertsCommand::List {
                    firing,
                    limit,
                    json,
                } => {
                    let alerts = store.list_alerts(*firing, *limit).await?;
                    if *json {
                        for a in &alerts {
                            println!("{}", serde_json::to_string(a)?);
                        }
                    } else {
                        println!(
                            "{:>5}  {:<16}  {:<14}  {:<8}  {:<20}  title",
                            "id", "rule", "kind", "state", "fired at"
                        );
                        for a in alerts {
                            println!(
                                "{:>5}  {:<16}  {:<14}  {:<8}  {:<20}  {}",
                                a.id,
                                a.rule,
                                a.kind,
                                a.state,
                                a.fired_at.format("%Y-%m-%d %H:%M:%S"),
                                a.title
                            );
                        }
                    }
                }
                AlertsCommand::Evaluate => {
                    let runtime = crate::runtime::Runtime::build(&settings)?;
                    // The rules read the reports: count what is not counted yet
                    // (a running daemon may be doing the same: then it does).
                    if let Err(e) = crate::report::Reports::new(store.clone(), None)
                        .backfill()
                        .await
                    {
                        tracing::info!(error = %e, "alerts: the reports are being counted elsewhere");
                    }
                    let names: Vec<(&str, &str)> = runtime
                        .alerts
                        .iter()
                        .map(|r| (&*r.name, r.kind.as_str()))
                        .collect();
                    let now = Utc::now();
                    let seen = store.register_alert_rules(&names, now).await?;
                    let accounts: Vec<String> = runtime
                        .account_keys()
                        .map(|k| k.name.as_str().to_owned())
                        .collect();
                    for rule in runtime.alerts.iter().filter(|r| r.timed()) {
                        let since = seen.get(&*rule.name).copied().unwrap_or(now);
                        let verdicts =
                            crate::alerts::evaluate(&store, rule, &accounts, since, now).await?;
                        let firing = verdicts
                            .iter()
                            .filter(|v| matches!(v, crate::alerts::Verdict::Fire(_)))
                            .count();
                        let fired = crate::alerts::reconcile(&store, rule, verdicts, now).await?;
                        println!(
                            "{}: {firing} firing, {} newly fired",
                            rule.name,
                            fired.len()
                        );
                    }
                }
            }
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Generate,
        } => {
            println!("{}", crate::privacy::generate());
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Rewrap,
        } => {
            let settings = load(&cli)?;
            let runtime = crate::runtime::Runtime::build(&settings)?;
            let store = open_store(&settings, true).await?;
            crate::app::check_data_keys(&store, &runtime).await?;
            let keys = runtime
                .data_keys
                .as_deref()
                .context("privacy.encrypt is off: nothing is sealed")?;
            let (done, failed) = crate::privacy::erase::rewrap(&store, keys, 500).await?;
            println!(
                "rewrapped {done} rows under key {}{}",
                keys.current_id(),
                if failed > 0 {
                    format!("; {failed} rows do not open with any configured key and were left as they are")
                } else {
                    String::new()
                }
            );
            Ok(())
        }
        Command::Customers {
            command: CustomersCommand::Find { email },
        } => {
            let settings = load(&cli)?;
            let runtime = crate::runtime::Runtime::build(&settings)?;
            let store = open_store(&settings, true).await?;
            let keys = runtime
                .data_keys
                .as_deref()
                .context("privacy.encrypt is off: there is no blind index")?;
            let rows = store.customers_find(&keys.email_indexes(email)).await?;
            println!(
                "{:>8}  {:<12}  {:<14}  {:<16}  time",
                "id", "account", "receipt", "type"
            );
            for r in &rows {
                println!(
                    "{:>8}  {:<12}  {:<14}  {:<16}  {}",
                    r.id,
                    r.account,
                    r.receipt,
                    r.transaction_type,
                    r.transaction_time.format("%Y-%m-%d %H:%M:%S")
                );
            }
            println!("{} notifications", rows.len());
            Ok(())
        }
        Command::Erase { email } => {
            let settings = load(&cli)?;
            let runtime = crate::runtime::Runtime::build(&settings)?;
            let store = open_store(&settings, true).await?;
            crate::app::check_data_keys(&store, &runtime).await?;
            let e = crate::privacy::erase::erase(&store, &runtime, email, Utc::now()).await?;
            println!(
                "erased the personal data of {} notifications and {} kept rejected posts; the erasure is recorded",
                e.notifications, e.rejected
            );
            if e.recipients.is_empty() {
                println!("no configured action forwards personal data");
            } else {
                println!("kaching forwards buyers' personal data to these recipients; tell them too (GDPR Art. 19):");
                for r in e.recipients {
                    println!("  {r}");
                }
            }
            Ok(())
        }
        Command::Risk { command } => {
            let settings = load(&cli)?;
            let store = open_store(&settings, true).await?;
            let window = i64::from(settings.risk.window_days);
            let now = Utc::now();
            match command {
                RiskCommand::Train => {
                    let (id, model, evaluation) =
                        crate::risk::train_and_store(&store, window, now).await?;
                    print!("{}", crate::risk::report(&evaluation));
                    println!("\nthe strongest effects (odds ratio against each feature's most common value):");
                    for (feature, value, odds) in model.strongest(8) {
                        println!("  {feature:<15} {value:<24} ×{odds:.2}");
                    }
                    println!(
                        "\nstored as model {id}, fitted on all {} matured sales; the running daemon scores new sales with it within a minute",
                        evaluation.train_sales + evaluation.test_sales
                    );
                }
                RiskCommand::Evaluate => {
                    let examples = crate::risk::training_set(&store, window, now).await?;
                    let (_, evaluation) = crate::risk::evaluate(&examples, window)?;
                    print!("{}", crate::risk::report(&evaluation));
                }
            }
            Ok(())
        }
        Command::Actions { command } => {
            let settings = load(&cli)?;
            let store = open_store(&settings, true).await?;
            match command {
                ActionsCommand::List {
                    status,
                    action,
                    limit,
                } => {
                    let runs = store.list_runs(*status, action.as_deref(), *limit).await?;
                    println!(
                        "{:>6}  {:<16}  {:<8}  {:>3}  {:<14}  {:<16}  {:<20}  last error",
                        "id", "action", "status", "try", "receipt", "type", "next attempt"
                    );
                    for r in runs {
                        // A run of an action the configuration no longer has
                        // is kept and never executed: say so.
                        let orphaned = match settings.actions.iter().find(|a| a.name == r.action) {
                            None => Some("no such action"),
                            Some(a) if !a.enabled => Some("action disabled"),
                            Some(_) => None,
                        };
                        println!(
                            "{:>6}  {:<16}  {:<8}  {:>3}  {:<14}  {:<16}  {:<20}  {}",
                            r.id,
                            r.action,
                            r.status_label(orphaned),
                            r.attempts,
                            r.subject_label(),
                            r.transaction_type.as_deref().unwrap_or(&r.subject_kind),
                            if r.status == "pending" {
                                r.next_attempt_at.format("%Y-%m-%d %H:%M:%S").to_string()
                            } else {
                                String::new()
                            },
                            r.last_error.unwrap_or_default()
                        );
                    }
                }
                ActionsCommand::Retry {
                    ids,
                    failed,
                    action,
                } => {
                    let n = if *failed {
                        store.retry_failed(action.as_deref(), Utc::now()).await?
                    } else {
                        anyhow::ensure!(!ids.is_empty(), "name run ids, or --failed");
                        store.retry_runs(ids, Utc::now()).await?
                    };
                    println!("requeued {n} runs");
                }
            }
            store.close().await;
            Ok(())
        }
        Command::Replay {
            action,
            since,
            until,
            kind,
        } => {
            let settings = load(&cli)?;
            let actions = Actions::from_settings(&settings.actions)?;
            let act = actions
                .by_name(action)
                .with_context(|| format!("no enabled action named `{action}`"))?;
            let store = open_store(&settings, true).await?;
            let until = until.unwrap_or_else(Utc::now);
            let (mut after, mut matched, mut skipped) = (0i64, Vec::new(), 0usize);
            loop {
                let page = store
                    .notifications_between(*since, until, after, 500)
                    .await?;
                let Some(last) = page.last() else { break };
                after = last.id;
                for n in &page {
                    if kind
                        .as_ref()
                        .is_none_or(|k| *k == n.notification.transaction_type)
                        && act.matches_stored(n)
                    {
                        matched.push(n.id);
                    } else {
                        skipped += 1;
                    }
                }
            }
            let runs = store.create_runs(&matched, action, Utc::now()).await?;
            println!(
                "created {} runs of `{action}` ({skipped} notifications in range did not match its filter)",
                runs.len()
            );
            store.close().await;
            Ok(())
        }
        Command::Demo {
            account,
            days,
            seed,
            end,
            sales_per_day,
        } => {
            let settings = load(&cli)?;
            let store = open_store(&settings, true).await?;
            // The end of the last day, but nothing later than now.
            let end = end
                .and_then(|d| d.succ_opt())
                .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc())
                .map_or_else(Utc::now, |t| t.min(Utc::now()));
            let summary = demo::run(
                settings,
                &store,
                account.as_deref(),
                *seed,
                *days,
                end,
                *sales_per_day,
            )
            .await;
            store.close().await;
            println!("{}", summary?);
            Ok(())
        }
        Command::Reconcile {
            account,
            since,
            until,
            dry_run,
            json,
        } => {
            let settings = load(&cli)?;
            let store = open_store(&settings, true).await?;
            let until = until.unwrap_or_else(|| crate::reconcile::pacific_day(Utc::now()));
            let report =
                crate::reconcile::reconcile(&settings, &store, account, (*since, until), *dry_run)
                    .await;
            store.close().await;
            let r = report?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            println!(
                "{} {}..{}{}: {} calls to the Orders API ({} count, {} list; {} answered 403)",
                r.account,
                r.from,
                r.to,
                if r.dry_run { " (dry run)" } else { "" },
                r.calls,
                r.by_kind.count,
                r.by_kind.list,
                r.by_kind.forbidden
            );
            println!(
                "compared {} days x types, {} differed, {} orders listed, {} missing, {} stored",
                r.compared,
                r.differing.len(),
                r.listed,
                r.missing.len(),
                r.recovered
            );
            for m in &r.missing {
                println!(
                    "  {:<8} {:<14} {}  {}",
                    m.kind,
                    m.receipt,
                    m.transaction_time.format("%Y-%m-%d %H:%M:%S UTC"),
                    if m.recovered {
                        "stored"
                    } else if r.dry_run {
                        "would store"
                    } else {
                        "already stored"
                    }
                );
            }
            Ok(())
        }
        Command::Rejected { command } => {
            let settings = load(&cli)?;
            let store = open_store(&settings, true).await?;
            match command {
                RejectedCommand::List { limit } => {
                    let rows = store.rejected_after(0, *limit).await?;
                    println!(
                        "{:>6}  {:<24}  {:<39}  {:<12}  {:>6}  reason",
                        "id", "received", "source", "account", "bytes"
                    );
                    for r in rows {
                        println!(
                            "{:>6}  {:<24}  {:<39}  {:<12}  {:>6}  {}",
                            r.id,
                            r.received_at.format("%Y-%m-%d %H:%M:%S UTC"),
                            r.source_ip.unwrap_or_default(),
                            r.account_hint.unwrap_or_default(),
                            r.body.len(),
                            r.reason
                        );
                    }
                }
                RejectedCommand::Reprocess => {
                    let done = rejected::reprocess(&settings, &store).await?;
                    println!(
                        "stored {}, already stored {}, still rejected {}",
                        done.stored, done.duplicates, done.still_rejected
                    );
                }
            }
            store.close().await;
            Ok(())
        }
    }
}
