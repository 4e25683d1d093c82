//! A real SMTP server for the email action tests: aiosmtpd (from PyPI,
//! `python3 -m pip install aiosmtpd`) with its `Mailbox` handler, which
//! writes every message it accepts into a maildir; read back and parsed
//! (MIME, transfer encodings, charsets) with `mailparse`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mailparse::MailHeaderMap as _;

/// How long aiosmtpd may take to start accepting connections.
const STARTUP: Duration = Duration::from_secs(15);

/// A free port on 127.0.0.1 right now (bind `:0`, read it, let go), for a
/// server started later with [`SmtpServer::start_on`].
pub fn reserve_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// Whether python3 can import aiosmtpd. When not: a loud SKIPPED message
/// and `false`, except under CI, where that is a failure (the same policy
/// as `PgDatabase::create`).
pub fn aiosmtpd_available() -> bool {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    let check = CHECK.get_or_init(|| {
        match Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .stdin(Stdio::null())
            .output()
        {
            Err(e) => Err(format!("cannot run python3: {e}")),
            Ok(o) if !o.status.success() => Err(format!(
                "python3 cannot import aiosmtpd: {}",
                String::from_utf8_lossy(&o.stderr)
                    .trim()
                    .lines()
                    .last()
                    .unwrap_or("")
            )),
            Ok(_) => Ok(()),
        }
    });
    match check {
        Ok(()) => true,
        Err(why) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("SMTP tests cannot run under CI: {why}");
            }
            crate::support::loud(&format!(
                "SKIPPED an SMTP test: {why}. Install it: python3 -m pip install aiosmtpd"
            ));
            false
        }
    }
}

/// A running aiosmtpd on 127.0.0.1, killed when dropped.
pub struct SmtpServer {
    pub port: u16,
    maildir: PathBuf,
    dir: tempfile::TempDir,
    child: Child,
}

impl SmtpServer {
    /// Starts a server on a free port. `None` when aiosmtpd is missing
    /// (see [`aiosmtpd_available`]).
    pub async fn start() -> Option<SmtpServer> {
        Self::start_on(reserve_port()).await
    }

    /// Starts a server on `port`; returns once it accepts connections.
    pub async fn start_on(port: u16) -> Option<SmtpServer> {
        if !aiosmtpd_available() {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        // Not created here: the handler creates the maildir with its subdirectories.
        let maildir = dir.path().join("maildir");
        let log = std::fs::File::create(dir.path().join("aiosmtpd.log")).expect("log file");
        let child = Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start python3 -m aiosmtpd");
        let mut server = SmtpServer {
            port,
            maildir,
            dir,
            child,
        };
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Some(status) = server.child.try_wait().expect("aiosmtpd status") {
                panic!(
                    "aiosmtpd exited ({status}) before accepting on 127.0.0.1:{port}:\n{}",
                    server.log()
                );
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Some(server);
            }
            if Instant::now() >= deadline {
                panic!(
                    "aiosmtpd did not accept connections on 127.0.0.1:{port} within {STARTUP:?}:\n{}",
                    server.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What aiosmtpd printed (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("aiosmtpd.log")).unwrap_or_default()
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = ["new", "cur"]
            .iter()
            .flat_map(|sub| {
                std::fs::read_dir(self.maildir.join(sub))
                    .into_iter()
                    .flatten()
            })
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        files
    }

    /// Every message received so far.
    pub fn messages(&self) -> Vec<ParsedMessage> {
        self.files()
            .iter()
            .map(|p| ParsedMessage::read(p))
            .collect()
    }

    /// Returns as soon as at least `n` messages have arrived, or what has
    /// arrived when `timeout` runs out (so the caller asserts the count).
    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<ParsedMessage> {
        let deadline = Instant::now() + timeout;
        while self.files().len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.messages()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One leaf MIME part, its body decoded (transfer encoding and charset),
/// with line ends as `\n` and trailing line ends removed (lettre adds
/// them after the text, and they are no part of what a template rendered).
#[derive(Debug, Clone)]
pub struct Part {
    pub mimetype: String,
    pub charset: String,
    /// `Content-Transfer-Encoding` as sent (`7bit` when absent).
    pub transfer_encoding: String,
    pub body: String,
}

/// A received message: its headers decoded (RFC 2047), in order, and its
/// leaf parts (one for a single-part message).
#[derive(Debug, Clone)]
pub struct ParsedMessage {
    pub headers: Vec<(String, String)>,
    /// The top-level Content-Type (`multipart/alternative`, `text/plain`).
    pub mimetype: String,
    pub parts: Vec<Part>,
    pub raw: String,
}

impl ParsedMessage {
    fn read(path: &Path) -> ParsedMessage {
        let raw = std::fs::read(path).expect("read a maildir message");
        let mail = mailparse::parse_mail(&raw)
            .unwrap_or_else(|e| panic!("{} is not a MIME message: {e}", path.display()));
        let mut parts = Vec::new();
        leaves(&mail, &mut parts);
        ParsedMessage {
            headers: mail
                .headers
                .iter()
                .map(|h| (h.get_key(), h.get_value()))
                .collect(),
            mimetype: mail.ctype.mimetype.clone(),
            parts,
            raw: String::from_utf8_lossy(&raw).into_owned(),
        }
    }

    /// The first header named `name` (case-insensitive), decoded.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// How many headers are named `name`.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .count()
    }

    pub fn part(&self, mimetype: &str) -> Option<&Part> {
        self.parts.iter().find(|p| p.mimetype == mimetype)
    }

    /// The decoded text/plain body.
    pub fn text(&self) -> Option<&str> {
        self.part("text/plain").map(|p| p.body.as_str())
    }

    /// The decoded text/html body.
    pub fn html(&self) -> Option<&str> {
        self.part("text/html").map(|p| p.body.as_str())
    }
}

fn leaves(mail: &mailparse::ParsedMail<'_>, out: &mut Vec<Part>) {
    if mail.ctype.mimetype.starts_with("multipart/") {
        for sub in &mail.subparts {
            leaves(sub, out);
        }
        return;
    }
    let body = mail
        .get_body()
        .expect("decode a MIME body")
        .replace("\r\n", "\n");
    let body = body.trim_end_matches('\n').to_owned();
    out.push(Part {
        mimetype: mail.ctype.mimetype.clone(),
        charset: mail.ctype.charset.clone(),
        transfer_encoding: mail
            .headers
            .get_first_value("Content-Transfer-Encoding")
            .unwrap_or_else(|| "7bit".into())
            .to_ascii_lowercase(),
        body,
    });
}
