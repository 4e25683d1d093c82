//! `kind = "command"`: run a local program (no shell) with the event JSON on
//! stdin and `KACHING_*` variables in its environment. Exit 0 is done; a
//! non-zero exit, a failure to start, or the timeout is retried. The
//! program runs in a process group of its own, and the timeout kills the
//! whole group: a script's children do not outlive it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::{Event, Outcome};
use crate::config::{invalid, ActionSettings, ConfigError};

/// How much of stderr is kept as the run's error.
const STDERR_KEPT: usize = 500;

#[derive(Debug)]
pub struct Command {
    program: PathBuf,
    args: Vec<String>,
    working_dir: Option<PathBuf>,
}

impl Command {
    pub fn from_settings(
        s: &ActionSettings,
        key: &dyn Fn(&str) -> String,
    ) -> Result<Self, ConfigError> {
        let program = s
            .program
            .as_deref()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| invalid(key("program"), "is required for kind = \"command\""))?;
        let resolved = resolve(Path::new(program)).ok_or_else(|| {
            invalid(
                key("program"),
                format!("`{program}` is not an executable file or on PATH"),
            )
        })?;
        if let Some(dir) = &s.working_dir {
            if !dir.is_dir() {
                return Err(invalid(
                    key("working_dir"),
                    format!("`{}` is not a directory", dir.display()),
                ));
            }
        }
        Ok(Command {
            program: resolved,
            args: s.args.clone(),
            working_dir: s.working_dir.clone(),
        })
    }

    pub async fn run(&self, event: &Event, timeout: Duration) -> Outcome {
        let input = match serde_json::to_vec(event) {
            Ok(b) => b,
            Err(e) => {
                return Outcome::Failed {
                    error: format!("cannot encode the event: {e}"),
                }
            }
        };
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .env("KACHING_EVENT_ID", event.id())
            .env("KACHING_TYPE", event.kind());
        // A notification's fields; other subjects (alerts) leave them unset.
        if let Some(n) = event.as_notification() {
            cmd.env("KACHING_RECEIPT", &n.receipt)
                .env("KACHING_ACCOUNT", &n.account)
                .env("KACHING_AMOUNT", n.amounts.account.as_deref().unwrap_or(""))
                .env("KACHING_CURRENCY", n.currency.as_deref().unwrap_or(""));
        }
        if let Event::Alert(a) = event {
            cmd.env("KACHING_ALERT_KIND", &a.alert.kind)
                .env("KACHING_ALERT_STATE", &a.alert.state)
                .env("KACHING_ACCOUNT", a.alert.account.as_deref().unwrap_or(""));
        }
        if let Some(dir) = &self.working_dir {
            cmd.current_dir(dir);
        }
        #[cfg(unix)]
        cmd.process_group(0);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return Outcome::retry(format!("cannot start {}: {e}", self.program.display()))
            }
        };
        // Its own group's id (process_group(0)).
        let group = child.id();
        let work = async move {
            if let Some(mut stdin) = child.stdin.take() {
                // A program that ignores its input closes the pipe early: not an error.
                let _ = stdin.write_all(&input).await;
            }
            child.wait_with_output().await
        };
        // On timeout the future is dropped with the child (kill_on_drop), and
        // the rest of its group is killed too.
        let waited = tokio::time::timeout(timeout, work).await;
        if waited.is_err() {
            kill_group(group);
        }
        match waited {
            Ok(Ok(out)) if out.status.success() => Outcome::Done,
            Ok(Ok(out)) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let tail: String = stderr
                    .trim()
                    .chars()
                    .rev()
                    .take(STDERR_KEPT)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                Outcome::retry(format!("{} ({tail})", out.status))
            }
            Ok(Err(e)) => Outcome::retry(format!("cannot wait for the program: {e}")),
            Err(_) => Outcome::retry(format!("killed after {timeout:?}")),
        }
    }
}

/// SIGKILL to every process of the group led by `leader`.
fn kill_group(leader: Option<u32>) {
    #[cfg(unix)]
    if let Some(pid) = leader
        .and_then(|p| i32::try_from(p).ok())
        .and_then(rustix::process::Pid::from_raw)
    {
        // Already gone (the group emptied itself): nothing to do.
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    #[cfg(not(unix))]
    let _ = leader;
}

/// The program as a path: itself if it has a `/`, else looked up on PATH.
fn resolve(program: &Path) -> Option<PathBuf> {
    let executable = |p: &Path| {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        }
        #[cfg(not(unix))]
        {
            p.is_file()
        }
    };
    if program.components().count() > 1 {
        return executable(program).then(|| program.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}
