//! A real browser for the page tests: Debian's headless Chromium, driven
//! over WebDriver by `chromedriver` with the fantoccini crate. Without
//! chromedriver a test is skipped loudly, or fails under `CI=true`
//! (`.ci/run` installs `chromium` and `chromium-driver`).

use std::net::TcpListener as StdListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};

use crate::support::loud;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver in a process group of its own: dropping it kills the
/// Chromium it started too, even when the test panicked.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // fantoccini joins paths onto this URL: it must end with a slash.
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}/"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A browser session. Fields drop in order: the session, then the driver.
pub struct Browser {
    pub client: Client,
    _driver: Driver,
    _profile: tempfile::TempDir,
}

fn capabilities(profile: &Path) -> Capabilities {
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            // As root, Chromium needs --no-sandbox; the rest keeps it off a
            // closed network and away from /dev/shm.
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                format!("--user-data-dir={}", profile.display()), "--window-size=1400,1000",
            ]
        },
        "goog:loggingPrefs": { "browser": "ALL" }
    });
    match caps {
        Value::Object(m) => m,
        _ => Capabilities::new(),
    }
}

/// chromedriver's log endpoint (not W3C): `POST /session/{id}/se/log`.
#[derive(Debug)]
struct GetLog;

impl WebDriverCompatibleCommand for GetLog {
    fn endpoint(&self, base: &url::Url, sid: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", sid.unwrap_or_default()))
    }
    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({ "type": "browser" }).to_string()),
        )
    }
}

impl Browser {
    /// `None` (and a loud line) when chromedriver is not installed, unless under CI.
    pub async fn start() -> Option<Browser> {
        if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true but {CHROMEDRIVER} or {CHROMIUM} is missing: apt-get install chromium chromium-driver");
            }
            loud("SKIPPED: browser test (apt-get install chromium chromium-driver)");
            return None;
        }
        let driver = Driver::start().await;
        let profile = tempfile::tempdir().unwrap();
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities(profile.path()))
            .connect(&driver.url)
            .await
            .expect("a WebDriver session");
        Some(Browser {
            client,
            _driver: driver,
            _profile: profile,
        })
    }

    /// The console's error lines since the last call (reading empties it).
    pub async fn console_errors(&self) -> Vec<String> {
        match self
            .client
            .issue_cmd(GetLog)
            .await
            .expect("the browser log")
        {
            Value::Array(entries) => entries
                .into_iter()
                .filter(|e| e["level"] == "SEVERE" || e["level"] == "WARNING")
                .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
                .collect(),
            other => panic!("unexpected log payload {other}"),
        }
    }

    /// A screenshot, checked to be a PNG, written to `dir/name.png`.
    pub async fn screenshot(&self, dir: &Path, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("a screenshot");
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, &png).unwrap();
        path
    }

    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}

/// Where screenshots go: `KACHING_SCREENSHOTS` (the README's are made with
/// `KACHING_SCREENSHOTS=docs/screenshots`), else a temporary folder.
pub fn screenshot_dir() -> (PathBuf, Option<tempfile::TempDir>) {
    match std::env::var_os("KACHING_SCREENSHOTS") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            std::fs::create_dir_all(&dir).unwrap();
            (dir, None)
        }
        None => {
            let tmp = tempfile::tempdir().unwrap();
            (tmp.path().to_owned(), Some(tmp))
        }
    }
}
