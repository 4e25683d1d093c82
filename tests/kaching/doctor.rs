//! `kaching doctor` on a sound setup and on one with a mistake of each
//! kind it knows: the real binary, a real SQLite file, real DNS.

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Output};

use crate::crash::Daemon;
use crate::support::Backend;

fn kaching(cfg: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kaching"))
        .arg("--config")
        .arg(cfg)
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_a_sound_setup_and_names_each_mistake() {
    let Some(good) = Daemon::configure(Backend::Sqlite, "").await else {
        return;
    };
    // Not migrated yet: a problem, with its fix.
    let before = kaching(&good.cfg, &["doctor"]);
    assert!(!before.status.success());
    assert!(
        text(&before).contains("kaching migrate"),
        "{}",
        text(&before)
    );
    assert!(kaching(&good.cfg, &["migrate"]).status.success());
    let after = kaching(&good.cfg, &["doctor"]);
    let said = text(&after);
    assert!(after.status.success(), "{said}");
    for line in [
        "ok    config",
        "ok    database",
        "ok    key",
        "ok    listen",
        "ok    clock",
        "no problems found",
    ] {
        assert!(said.contains(line), "`{line}` in:\n{said}");
    }
    assert!(!said.contains(crate::support::KEY), "no key printed");

    let Some(bad) = Daemon::configure(
        Backend::Sqlite,
        "[[actions]]\nname = \"crm\"\nkind = \"webhook\"\nurl = \"https://no-such-host.invalid/hook\"\n\
         [[actions]]\nname = \"local\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/hook\"\n",
    )
    .await
    else {
        return;
    };
    let cfg = std::fs::read_to_string(&bad.cfg)
        .unwrap()
        .replace(crate::support::KEY, "lowercase-key-1");
    std::fs::write(&bad.cfg, cfg).unwrap();
    assert!(kaching(&bad.cfg, &["migrate"]).status.success());
    // Its first build writes the data key (mode 0600), which a careless copy widened.
    assert!(kaching(&bad.cfg, &["check-config"]).status.success());
    let key = bad.settings.privacy.data_key_file.clone().unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = kaching(&bad.cfg, &["doctor"]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    for expected in [
        "not all uppercase letters and digits",
        "no-such-host.invalid does not resolve",
        "127.0.0.1 is a private or loopback address",
        "other users can read it",
        "chmod 600",
    ] {
        assert!(said.contains(expected), "`{expected}` in:\n{said}");
    }
    assert!(!said.contains("lowercase-key-1"), "no key printed");
}
