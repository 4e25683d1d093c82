//! Customer data at rest: what a copied database file or a dump shows of
//! the buyers (nothing), what the actions still get (everything), and what
//! a wrong key does (refuse to start, naming the setting).

use std::time::Duration;

use kaching::config::Settings;
use rand::Rng as _;
use secrecy::SecretString;

use crate::actions::webhook;
use crate::on_both_backends;
use crate::support::{envelope, plaintext, Backend, TestApp, KEY};
use crate::target::{eventually, Target};

const WAIT: Duration = Duration::from_secs(15);

fn random(prefix: &str) -> String {
    let n: u64 = rand::rng().random();
    format!("{prefix}{n:016x}")
}

/// A buyer whose every field is unique.
struct Buyer {
    email: String,
    first: String,
    phone: String,
    street: String,
}

impl Buyer {
    fn new() -> Buyer {
        Buyer {
            email: format!("{}@{}.example", random("mail"), random("dom")),
            first: random("Name"),
            phone: random("+4670"),
            street: random("Street"),
        }
    }

    fn secrets(&self) -> [&str; 4] {
        [&self.email, &self.first, &self.phone, &self.street]
    }

    /// A sale to this buyer, in ClickBank's v6 shape.
    fn sale(&self, receipt: &str) -> String {
        plaintext(receipt, "SALE", "2026-11-20T10:00:00Z", 1).replace(
            r#""customer":{"billing":{"firstName":"Zoë","lastName":"Ångström","fullName":"Zoë Ångström","email":"zoe@example.com","address":{"country":"SE"}}}"#,
            &format!(
                r#""customer":{{"billing":{{"firstName":"{}","lastName":"L","phoneNumber":"{}","email":"{}","address":{{"address1":"{}","country":"SE"}}}}}}"#,
                self.first, self.phone, self.email, self.street
            ),
        )
    }
}

/// Every byte the database keeps: the SQLite file and its WAL as they are,
/// or a `pg_dump` of the Postgres database.
fn database_bytes(app: &TestApp) -> Vec<u8> {
    match &app.pg {
        None => {
            let db = app.dir.path().join("kaching.db");
            let mut bytes = std::fs::read(&db).unwrap();
            if let Ok(wal) = std::fs::read(db.with_extension("db-wal")) {
                bytes.extend(wal);
            }
            bytes
        }
        Some(pg) => {
            let out = std::process::Command::new("pg_dump")
                .arg(&pg.url)
                .output()
                .expect("pg_dump runs");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

async fn no_buyer_data_reaches_the_database_and_actions_still_get_it(backend: Backend) {
    let target = Target::start("127.0.0.1:0".parse().unwrap()).await;
    let Some(app) = TestApp::spawn(backend, |s: &mut Settings| {
        s.actions.push(webhook("crm", &target.url()));
        s.accounts[0].hmac_header = "X-Signature".into();
    })
    .await
    else {
        return;
    };
    let buyers: Vec<Buyer> = (0..4).map(|_| Buyer::new()).collect();
    for (i, b) in buyers.iter().enumerate() {
        let r = app
            .post_ins(envelope(KEY, &b.sale(&format!("PRIV{i:04}"))))
            .await;
        assert_eq!(r.0, 200);
    }
    // A plain JSON post with a wrong signature: refused, and kept.
    let forged = Buyer::new();
    post_refused(&app, &forged, "PRIV9999", 1).await;
    // The webhook (include_customer) receives them in clear.
    let got = target.wait_for(buyers.len(), WAIT).await;
    for b in &buyers {
        let d = got
            .iter()
            .find(|d| d.json()["customer"]["billing"]["email"] == b.email.as_str())
            .unwrap_or_else(|| panic!("{} delivered in clear", b.email));
        assert_eq!(
            d.json()["customer"]["billing"]["address"]["address1"],
            b.street.as_str()
        );
        assert_eq!(
            d.json()["notification"]["customer"]["billing"]["phoneNumber"],
            b.phone.as_str()
        );
    }
    // The database, byte for byte: none of it, not even the refused post's.
    let bytes = database_bytes(&app);
    assert!(contains(&bytes, "PRIV0000"), "the search sees the rows");
    for b in buyers.iter().chain([&forged]) {
        for secret in b.secrets() {
            assert!(!contains(&bytes, secret), "{secret} is in the database");
        }
    }
    // The clear part keeps what reports need.
    let rows = app.rows().await;
    assert!(rows[0].notification.payload.contains(r#""country":"SE""#));
    assert!(rows
        .iter()
        .all(|r| r.personal.as_deref().is_some_and(|p| p.starts_with("v1."))));
    let app = app.stop().await;
    if app.pg.is_none() {
        // After the last connection closed (a checkpoint), the file alone.
        let bytes = database_bytes(&app);
        for b in &buyers {
            assert!(!contains(&bytes, &b.email));
        }
    }
}

async fn a_wrong_key_is_refused_and_a_rotated_one_still_opens_old_rows(backend: Backend) {
    let target = Target::start("127.0.0.1:0".parse().unwrap()).await;
    let Some(app) = TestApp::spawn(backend, |_| {}).await else {
        return;
    };
    let b = Buyer::new();
    assert_eq!(
        app.post_ins(envelope(KEY, &b.sale("ROT00001"))).await.0,
        200
    );
    let app = app.stop().await;
    let key_file = app.settings.privacy.data_key_file.clone().unwrap();
    let old = std::fs::read_to_string(&key_file).unwrap();

    // Another key in its place: the start is refused, naming the setting.
    std::fs::write(&key_file, kaching::privacy::generate()).unwrap();
    let err = kaching::app::App::build(&app.settings)
        .await
        .err()
        .expect("refused");
    let message = format!("{err:#}");
    assert!(message.contains("privacy.data_key_file"), "{message}");
    // A key that is no key at all: named too.
    std::fs::write(&key_file, "not a key").unwrap();
    let err = kaching::runtime::Runtime::build(&app.settings).expect_err("refused");
    assert!(err.to_string().contains("privacy.data_key_file"), "{err}");

    // Rotated: a new key, the old one among the previous keys. Old rows open.
    std::fs::write(&key_file, kaching::privacy::generate()).unwrap();
    let mut settings = app.settings;
    settings.privacy.previous_data_keys = vec![SecretString::from(old)];
    settings.actions.push(webhook("crm", &target.url()));
    let app = TestApp::start(settings, app.dir, app.pg).await;
    let stored = app.rows().await.remove(0);
    let crm = app
        .settings
        .actions
        .iter()
        .find(|a| a.name == "crm")
        .unwrap();
    assert!(crm.includes_customer());
    // Replay the old notification through the new action: it opens with the previous key.
    let runs = app
        .store
        .create_runs(&[stored.id], "crm", chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(runs.len(), 1);
    let got = target.wait_for(1, WAIT).await;
    assert_eq!(
        got[0].json()["customer"]["billing"]["email"],
        b.email.as_str()
    );
    // New rows are sealed under the new key.
    assert_eq!(
        app.post_ins(envelope(KEY, &Buyer::new().sale("ROT00002")))
            .await
            .0,
        200
    );
    let ids = app.store.data_key_ids().await.unwrap();
    assert_eq!(ids.len(), 2, "{ids:?}");
    app.stop().await;
}

/// Posts `buyer`'s sale as plain JSON under a wrong HMAC signature (refused
/// and kept), then waits until `kept` posts are kept.
async fn post_refused(app: &TestApp, buyer: &Buyer, receipt: &str, kept: usize) {
    let r = app
        .client
        .post(format!("{}/ins", app.base))
        .header("X-Signature", "sha256=00")
        .body(buyer.sale(receipt))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    eventually(WAIT, "the kept post", || async {
        (app.store.rejected_after(0, 100).await.unwrap().len() >= kept).then_some(())
    })
    .await;
}

/// Whether the stored notification `receipt` still has sealed personal data.
async fn sealed(app: &TestApp, receipt: &str) -> bool {
    app.rows()
        .await
        .iter()
        .find(|n| n.notification.receipt.as_str() == receipt)
        .unwrap_or_else(|| panic!("{receipt} is stored"))
        .personal
        .is_some()
}

async fn erasing_a_buyer_under_load_keeps_the_sale_and_a_retry_does_not_restore_them(
    backend: Backend,
) {
    let target = Target::start("127.0.0.1:0".parse().unwrap()).await;
    let Some(app) = TestApp::spawn(backend, |s: &mut Settings| {
        s.accounts[0].hmac_header = "X-Signature".into();
    })
    .await
    else {
        return;
    };
    let (a, b) = (Buyer::new(), Buyer::new());
    for (receipt, buyer) in [("ERAA0001", &a), ("ERAA0002", &a), ("ERAB0001", &b)] {
        assert_eq!(
            app.post_ins(envelope(KEY, &buyer.sale(receipt))).await.0,
            200
        );
    }
    // A refused post of A's, kept.
    post_refused(&app, &a, "ERAA0009", 1).await;
    // The CLI, while other buyers' sales keep arriving.
    let cfg = app.dir.path().join("erase.toml");
    std::fs::write(
        &cfg,
        format!(
            "[database]\nurl = \"{}\"\n[privacy]\ndata_key_file = \"{}\"\n\
             [[accounts]]\nname = \"acme\"\nsecret_key = \"{KEY}\"\n\
             [[actions]]\nname = \"crm\"\nkind = \"webhook\"\nallow_private_targets = true\nurl = \"{}\"\n",
            app.settings.database.url.expose(),
            crate::cli::key_file(&app).display(),
            target.url()
        ),
    )
    .unwrap();
    let others: Vec<Buyer> = (0..30).map(|_| Buyer::new()).collect();
    let load = async {
        for (i, o) in others.iter().enumerate() {
            let r = app
                .post_ins(envelope(KEY, &o.sale(&format!("LOAD{i:04}"))))
                .await;
            assert_eq!(r.0, 200);
        }
    };
    let cli = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        let email = a.email.to_uppercase();
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_kaching"))
                .args([
                    "--config",
                    cfg.to_str().unwrap(),
                    "erase",
                    "--email",
                    &email,
                ])
                .output()
                .unwrap()
        }
    });
    let (out, ()) = tokio::join!(cli, load);
    let out = out.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("erased the personal data of 2 notifications and 1 kept rejected posts"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "webhook `crm` to http://{}",
            target.url().split('/').nth(2).unwrap()
        )),
        "{stdout}"
    );
    assert!(!sealed(&app, "ERAA0001").await && !sealed(&app, "ERAA0002").await);
    assert!(sealed(&app, "ERAB0001").await, "another buyer's data stays");
    for i in 0..others.len() {
        assert!(
            sealed(&app, &format!("LOAD{i:04}")).await,
            "LOAD{i:04} stays sealed"
        );
    }
    assert!(app.store.rejected_after(0, 10).await.unwrap().is_empty());
    // The sale itself is still there, with its money.
    let row = app
        .rows()
        .await
        .into_iter()
        .find(|n| n.notification.receipt.as_str() == "ERAA0001")
        .unwrap();
    assert_eq!(
        row.notification.total_account_amount.unwrap().to_string(),
        "37.00"
    );
    // ClickBank's late retry: a duplicate, and the data stays erased.
    let retry = a
        .sale("ERAA0001")
        .replace("\"attemptCount\":1", "\"attemptCount\":2");
    assert_eq!(app.post_ins(envelope(KEY, &retry)).await.0, 200);
    assert!(!sealed(&app, "ERAA0001").await);
    let erasures = app.store.erasures().await.unwrap();
    assert_eq!(
        erasures
            .iter()
            .map(|e| (e.1.as_str(), e.2, e.3))
            .collect::<Vec<_>>(),
        [("request", 2, 1)]
    );
    app.stop().await;
}

async fn rewrap_under_load_leaves_no_row_under_the_old_key(backend: Backend) {
    let Some(app) = TestApp::spawn(backend, |_| {}).await else {
        return;
    };
    for i in 0..40 {
        let r = app
            .post_ins(envelope(KEY, &Buyer::new().sale(&format!("OLD{i:05}"))))
            .await;
        assert_eq!(r.0, 200);
    }
    let app = app.stop().await;
    let key_file = crate::cli::key_file(&app);
    let old = std::fs::read_to_string(&key_file).unwrap();
    let new = kaching::privacy::generate();
    std::fs::write(&key_file, &new).unwrap();
    let mut settings = app.settings;
    settings.privacy.previous_data_keys = vec![SecretString::from(old.clone())];
    let app = TestApp::start(settings, app.dir, app.pg).await;
    let keys = kaching::privacy::DataKeys::new(&new, &[&old]).unwrap();
    let load = async {
        for i in 0..40 {
            let r = app
                .post_ins(envelope(KEY, &Buyer::new().sale(&format!("NEW{i:05}"))))
                .await;
            assert_eq!(r.0, 200);
        }
    };
    let (rewrapped, ()) = tokio::join!(kaching::privacy::erase::rewrap(&app.store, &keys, 7), load);
    let (done, failed) = rewrapped.unwrap();
    assert_eq!((done, failed), (40, 0));
    assert!(app
        .store
        .sealed_not_under(keys.current_id(), 0, 10)
        .await
        .unwrap()
        .is_empty());
    // Every row opens under the new key alone, and none was lost.
    let only_new = kaching::privacy::DataKeys::new(&new, &[]).unwrap();
    let rows = app.rows().await;
    assert_eq!(rows.len(), 80);
    for n in &rows {
        kaching::privacy::open_customer(&only_new, n, n.personal.as_deref().unwrap()).unwrap();
    }
    app.stop().await;
}

async fn retention_purges_exactly_the_rows_past_their_age(backend: Backend) {
    let Some(app) = TestApp::spawn(backend, |s: &mut Settings| {
        s.accounts[0].hmac_header = "X-Signature".into();
    })
    .await
    else {
        return;
    };
    for i in 0..3 {
        assert_eq!(
            app.post_ins(envelope(KEY, &Buyer::new().sale(&format!("AGED{i:04}"))))
                .await
                .0,
            200
        );
    }
    post_refused(&app, &Buyer::new(), "AGEDREJ1", 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cut = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..2 {
        assert_eq!(
            app.post_ins(envelope(KEY, &Buyer::new().sale(&format!("YOUNG{i:03}"))))
                .await
                .0,
            200
        );
    }
    post_refused(&app, &Buyer::new(), "YOUNGREJ", 2).await;
    let (n, r) = app
        .store
        .purge_before(Some(cut), cut, chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!((n, r), (3, 1));
    for i in 0..3 {
        assert!(!sealed(&app, &format!("AGED{i:04}")).await);
    }
    for i in 0..2 {
        assert!(sealed(&app, &format!("YOUNG{i:03}")).await);
    }
    assert_eq!(app.store.rejected_after(0, 10).await.unwrap().len(), 1);
    assert_eq!(
        app.rows().await.len(),
        5,
        "the notifications themselves stay"
    );
    app.stop().await;
}

on_both_backends!(
    no_buyer_data_reaches_the_database_and_actions_still_get_it,
    a_wrong_key_is_refused_and_a_rotated_one_still_opens_old_rows,
    erasing_a_buyer_under_load_keeps_the_sale_and_a_retry_does_not_restore_them,
    rewrap_under_load_leaves_no_row_under_the_old_key,
    retention_purges_exactly_the_rows_past_their_age,
);

/// The dashboard's Customers page: found by email, erased only with the box ticked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_customers_page_finds_a_buyer_and_erases_behind_a_confirmation() {
    let Some(app) = TestApp::spawn(Backend::Sqlite, |_| {}).await else {
        return;
    };
    let buyer = Buyer::new();
    assert_eq!(
        app.post_ins(envelope(KEY, &buyer.sale("PAGE0001"))).await.0,
        200
    );
    let admin = app.admin().to_owned();
    let html = app
        .client
        .get(format!("{admin}/customers"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let at = html.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    let csrf = html[at..at + html[at..].find('"').unwrap()].to_owned();
    let post = |path: &str, form: Vec<(&str, String)>| {
        app.client
            .post(format!("{admin}{path}"))
            .header("origin", admin.clone())
            .form(&form)
            .send()
    };
    let email = buyer.email.to_uppercase();
    let found = post(
        "/customers",
        vec![("csrf", csrf.clone()), ("email", email.clone())],
    )
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        found.contains("PAGE0001") && found.contains("id=\"erase\""),
        "{found}"
    );
    // Without the confirmation: nothing happens.
    let unconfirmed = post(
        "/customers/erase",
        vec![("csrf", csrf.clone()), ("email", email.clone())],
    )
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        unconfirmed.contains("Tick the confirmation"),
        "{unconfirmed}"
    );
    assert!(sealed(&app, "PAGE0001").await);
    let erased = post(
        "/customers/erase",
        vec![
            ("csrf", csrf.clone()),
            ("email", email.clone()),
            ("confirm", "yes".into()),
        ],
    )
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        erased.contains("Erased the personal data of 1 notifications"),
        "{erased}"
    );
    assert!(!sealed(&app, "PAGE0001").await);
    // A forged post (no CSRF token) is refused.
    let r = post(
        "/customers/erase",
        vec![("email", email), ("confirm", "yes".into())],
    )
    .await
    .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    app.stop().await;
}

/// Rows stored in clear (before sealing existed, or with encryption off)
/// are sealed by `keys rewrap`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_seals_rows_stored_in_clear() {
    let Some(app) = TestApp::spawn(Backend::Sqlite, |s: &mut Settings| {
        s.privacy.encrypt = false
    })
    .await
    else {
        return;
    };
    let buyers: Vec<Buyer> = (0..3).map(|_| Buyer::new()).collect();
    for (i, b) in buyers.iter().enumerate() {
        assert_eq!(
            app.post_ins(envelope(KEY, &b.sale(&format!("CLR{i:05}"))))
                .await
                .0,
            200
        );
    }
    assert!(app.rows().await.iter().all(|n| n.personal.is_none()));
    let app = app.stop().await;
    let mut settings = app.settings;
    settings.privacy.encrypt = true;
    let app = TestApp::start(settings, app.dir, app.pg).await;
    let keys = app.settings.privacy.data_key_file.clone().unwrap();
    let keys =
        kaching::privacy::DataKeys::new(&std::fs::read_to_string(keys).unwrap(), &[]).unwrap();
    let (done, failed) = kaching::privacy::erase::rewrap(&app.store, &keys, 2)
        .await
        .unwrap();
    assert_eq!((done, failed), (3, 0));
    for n in app.rows().await {
        assert!(
            !n.notification.payload.contains("@dom"),
            "{}",
            n.notification.payload
        );
        let opened =
            kaching::privacy::open_customer(&keys, &n, n.personal.as_deref().unwrap()).unwrap();
        assert!(buyers.iter().any(|b| opened.contains(&b.email)));
    }
    // Found by email afterwards.
    let found = app
        .store
        .customers_find(&keys.email_indexes(&buyers[1].email))
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    app.stop().await;
}
