//! The service files in `deploy/` and what they rely on: the unit passes
//! `systemd-analyze verify` (with its ExecStart pointed at the built
//! binary), and the daemon tells systemd it is ready (Type=notify) only
//! once it serves, and that it is stopping on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::crash::Daemon;
use crate::support::Backend;

const UNIT: &str = include_str!("../../deploy/kaching.service");

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        crate::support::loud("SKIPPED: systemd-analyze is not installed");
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is required under CI"
        );
        return;
    };
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("kaching.service");
    std::fs::write(
        &unit,
        UNIT.replace("/usr/local/bin/kaching", env!("CARGO_BIN_EXE_kaching")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
    for line in [
        "Type=notify",
        "User=kaching",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/kaching",
        "NoNewPrivileges=yes",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "CapabilityBoundingSet=",
    ] {
        assert!(UNIT.lines().any(|l| l == line), "the unit has `{line}`");
    }
    // Below 1024 is the drop-in's business, not the unit's.
    let drop_in = include_str!("../../deploy/low-port.conf");
    assert!(drop_in.contains("AmbientCapabilities=CAP_NET_BIND_SERVICE"));
    assert!(!UNIT.contains("CAP_NET_BIND_SERVICE"));
}

fn receive(socket: &UnixDatagram, want: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.lines().any(|l| l == want);
            got.push(msg);
            if done {
                return got;
            }
        }
    }
    panic!("no {want} within {within:?}; got {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_reports_ready_then_stopping_to_systemd() {
    let Some(d) = Daemon::configure(Backend::Sqlite, "").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // The socket for this daemon alone (not the test process's environment).
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_kaching"))
        .args(["--config", d.cfg.to_str().unwrap(), "serve"])
        .env("NOTIFY_SOCKET", &path)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&d.log).unwrap())
        .spawn()
        .unwrap();
    let got = receive(&socket, "READY=1", Duration::from_secs(20));
    // Ready means serving: the health check answers at once, and so does
    // `kaching health --ready` (a container's HEALTHCHECK).
    let r = reqwest::get(format!("{}/healthz", d.base)).await.unwrap();
    assert_eq!(r.status(), 200, "{got:?}");
    let health = || {
        Command::new(env!("CARGO_BIN_EXE_kaching"))
            .args(["--config", d.cfg.to_str().unwrap(), "health", "--ready"])
            .output()
            .unwrap()
    };
    let up = health();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(String::from_utf8_lossy(&up.stdout).contains("/readyz"));
    Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    receive(&socket, "STOPPING=1", Duration::from_secs(10));
    assert!(daemon.wait().unwrap().success());
    let down = health();
    assert!(!down.status.success(), "nothing answers: non-zero");
    assert!(String::from_utf8_lossy(&down.stderr).contains("nothing answers"));
}
