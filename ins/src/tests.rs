//! Tables of cases over the real vectors in `tests/fixtures` and bodies made with
//! [`encrypt`].

use base64::{engine::general_purpose::STANDARD, Engine as _};
use chrono::{DateTime, TimeZone, Utc};
use secrecy::SecretString;
use serde_json::Value;

use super::*;

const V7: &str = include_str!("../../tests/fixtures/v7_test_button.json");
const V6: &str = include_str!("../../tests/fixtures/v6_sale_thirdparty.json");
const LEGACY_SALE: &str = include_str!("../../tests/fixtures/legacy_v4_sale.json");
const LEGACY_TEST: &str = include_str!("../../tests/fixtures/legacy_v4_test.json");

const SECRET: &str = "SECRETKEY0000001";
const OLD_SECRET: &str = "OLDSECRETKEY0002";
const OTHER_SECRET: &str = "OTHERACCOUNT0003";
const IV: [u8; 16] = *b"0123456789ABCDEF";
const SIG_HEADER: &str = "x-kaching-signature";

struct Fixture {
    secret: String,
    body: String,
    expected: Value,
}

fn fixture(text: &str) -> Fixture {
    let v: Value = serde_json::from_str(text).unwrap();
    Fixture {
        secret: v["secret_key"].as_str().unwrap().to_owned(),
        body: v["http_body"].as_str().unwrap().to_owned(),
        expected: v["expected"].clone(),
    }
}

fn account(name: &str, secrets: &[&str]) -> AccountKeys {
    AccountKeys {
        name: AccountName::parse(name).unwrap(),
        keys: secrets
            .iter()
            .map(|s| AccountKey::new(SecretString::from(*s)))
            .collect(),
        legacy_cverify: false,
        hmac_header: None,
    }
}

fn legacy_account(name: &str, secrets: &[&str]) -> AccountKeys {
    AccountKeys {
        legacy_cverify: true,
        ..account(name, secrets)
    }
}

fn hmac_account(name: &str, secrets: &[&str]) -> AccountKeys {
    AccountKeys {
        hmac_header: Some(SIG_HEADER.to_owned()),
        ..account(name, secrets)
    }
}

/// A case's expected outcome: the key index that authenticates, or the logged reason.
type Expect = Result<usize, Reject>;

fn no_headers(_: &str) -> Option<&'static str> {
    None
}

fn auth(body: &[u8], accounts: &[&AccountKeys]) -> Result<Authenticated, InsError> {
    authenticate(body, &no_headers, accounts)
}

fn reject_of(r: Result<Authenticated, InsError>) -> Reject {
    match r {
        Err(InsError::Rejected(reason)) => reason,
        Err(InsError::Unrecognised) => panic!("unrecognised instead of rejected"),
        Ok(a) => panic!("accepted: {a:?}"),
    }
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
}

fn dec(s: &str) -> Option<rust_decimal::Decimal> {
    Some(s.parse().unwrap())
}

/// A minimal v6 plaintext with `extra` members spliced in after the required ones.
fn plaintext(receipt: &str, kind: &str, extra: &str) -> String {
    format!(
        r#"{{"transactionTime":"2014-12-20T14:03:10-08:00","receipt":"{receipt}","transactionType":"{kind}"{extra}}}"#
    )
}

fn envelope_members(body: &str) -> (String, String) {
    let v: Value = serde_json::from_str(body).unwrap();
    (
        v["notification"].as_str().unwrap().to_owned(),
        v["iv"].as_str().unwrap().to_owned(),
    )
}

fn envelope_body(notification: &str, iv: &str) -> String {
    serde_json::json!({ "notification": notification, "iv": iv }).to_string()
}

// ---------------------------------------------------------------- real vectors

#[test]
fn envelope_fixtures_decrypt_to_the_expected_plaintext() {
    for text in [V7, V6] {
        let f = fixture(text);
        let plain = f.expected["plaintext"].as_str().unwrap();
        assert_eq!(decrypt(&f.secret, f.body.as_bytes()).unwrap(), plain);
        assert_eq!(recognise(f.body.as_bytes()), Some(BodyForm::Envelope));

        let acct = account("main", &[&f.secret]);
        let a = auth(f.body.as_bytes(), &[&acct]).unwrap();
        assert_eq!(a.account.as_str(), "main");
        assert_eq!((a.key_index, a.form), (0, BodyForm::Envelope));
        assert_eq!(a.notification.payload, plain);
        let json: Value = serde_json::from_str(&a.notification.payload).unwrap();
        assert_eq!(json, f.expected["json"]);
    }
}

#[test]
fn v7_test_button_fields() {
    let f = fixture(V7);
    let acct = account("main", &[&f.secret]);
    let n = auth(f.body.as_bytes(), &[&acct]).unwrap().notification;
    // 2022-08-10 16:20:15 -07:00
    assert_eq!(n.transaction_time, utc(2022, 8, 10, 23, 20, 15));
    assert_eq!(n.receipt.as_str(), "********");
    assert_eq!(n.transaction_type, TransactionType::Test);
    assert!(n.transaction_type.is_test());
    assert_eq!(n.role.as_str(), "VENDOR");
    assert_eq!(n.vendor.as_deref(), Some("ketoboost1"));
    assert_eq!(n.affiliate, None);
    assert_eq!(n.total_account_amount, dec("1.00"));
    assert_eq!(n.total_account_amount.unwrap().to_string(), "1.00");
    assert_eq!(n.total_order_amount, dec("1.00"));
    assert_eq!(n.total_tax_amount, dec("0.00"));
    assert_eq!(n.total_shipping_amount, dec("0.00"));
    assert_eq!(n.currency.as_deref(), Some("USD"));
    assert_eq!(n.version.as_deref(), Some("7.0"));
    assert_eq!(n.attempt_count, 1);
}

#[test]
fn v6_third_party_fields() {
    let f = fixture(V6);
    let acct = account("main", &[&f.secret]);
    let n = auth(f.body.as_bytes(), &[&acct]).unwrap().notification;
    assert_eq!(n.transaction_time, utc(2023, 7, 28, 2, 7, 57));
    assert_eq!(n.transaction_type, TransactionType::Sale);
    assert_eq!(n.vendor.as_deref(), Some("TestVendorNickname"));
    assert_eq!(n.version.as_deref(), Some("6.0"));
    assert_eq!(n.total_account_amount, dec("1.00"));
}

#[test]
fn encrypt_reproduces_the_clickbank_body_byte_for_byte() {
    let f = fixture(V7);
    let plain = f.expected["plaintext"].as_str().unwrap();
    assert_eq!(
        encrypt(&f.secret, plain.as_bytes(), *b"A62307B73112FB7A"),
        f.body
    );

    // The third-party body has a space before "iv": compare the members.
    let f = fixture(V6);
    let plain = f.expected["plaintext"].as_str().unwrap();
    let ours = encrypt(&f.secret, plain.as_bytes(), *b"M0EwQTZDMjlBRQ==");
    assert_eq!(envelope_members(&ours), envelope_members(&f.body));
}

fn form_fields(body: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect()
}

#[test]
fn legacy_fixtures_verify() {
    for text in [LEGACY_SALE, LEGACY_TEST] {
        let f = fixture(text);
        let fields = form_fields(&f.body);
        let expected: serde_json::Map<String, Value> =
            f.expected["fields"].as_object().unwrap().clone();
        assert_eq!(fields.len(), expected.len());
        for (name, value) in &fields {
            assert_eq!(expected[name].as_str(), Some(value.as_str()), "{name}");
        }
        let cverify = f.expected["cverify"].as_str().unwrap();
        assert_eq!(legacy_cverify(&fields, &f.secret), cverify);
        assert_eq!(recognise(f.body.as_bytes()), Some(BodyForm::LegacyForm));

        let acct = legacy_account("legacy", &[&f.secret]);
        let a = auth(f.body.as_bytes(), &[&acct]).unwrap();
        assert_eq!((a.key_index, a.form), (0, BodyForm::LegacyForm));
        // The payload is every posted field, as strings, in posted order.
        let payload: serde_json::Map<String, Value> =
            serde_json::from_str(&a.notification.payload).unwrap();
        assert_eq!(payload, expected);
        assert!(a.notification.payload.starts_with(r#"{"caccountamount":"#));
        assert!(a
            .notification
            .payload
            .ends_with(&format!(r#""cverify":"{cverify}"}}"#)));
    }
}

#[test]
fn legacy_sale_fields() {
    let f = fixture(LEGACY_SALE);
    let acct = legacy_account("legacy", &[&f.secret]);
    let n = auth(f.body.as_bytes(), &[&acct]).unwrap().notification;
    assert_eq!(n.receipt.as_str(), "7965F6NE");
    assert_eq!(n.transaction_type, TransactionType::Sale);
    assert_eq!(n.role.as_str(), "VENDOR");
    assert_eq!(n.transaction_time, utc(2013, 11, 7, 22, 47, 38));
    assert_eq!(n.vendor.as_deref(), Some("csmsurvive"));
    assert_eq!(n.affiliate.as_deref(), Some("survive77"));
    assert_eq!(n.total_account_amount, dec("8.30"));
    assert_eq!(n.total_account_amount.unwrap().to_string(), "8.30");
    assert_eq!(n.total_order_amount, dec("37.00"));
    assert_eq!(n.total_tax_amount, dec("0"));
    assert_eq!(n.total_shipping_amount, dec("0"));
    assert_eq!(n.currency.as_deref(), Some("USD"));
    assert_eq!(n.version.as_deref(), Some("4.0"));
    assert_eq!(n.attempt_count, 1);
}

#[test]
fn legacy_test_fields() {
    let f = fixture(LEGACY_TEST);
    let acct = legacy_account("legacy", &[&f.secret]);
    let n = auth(f.body.as_bytes(), &[&acct]).unwrap().notification;
    assert_eq!(n.receipt.as_str(), "********");
    assert_eq!(n.transaction_type, TransactionType::Test);
    assert_eq!(n.transaction_time, utc(2013, 11, 1, 19, 19, 31));
    assert_eq!(
        n.affiliate, None,
        "an empty ctransaffiliate is no affiliate"
    );
    assert_eq!(n.total_account_amount, dec("1.00"));
}

// ---------------------------------------------------------------- envelope round trips

#[test]
fn round_trips_decode_as_expected() {
    struct Case {
        name: &'static str,
        plain: String,
        check: fn(&Notification),
    }
    let cases = [
        Case {
            name: "non-ASCII customer name",
            plain: plaintext(
                "ABCD1234",
                "SALE",
                r#","customer":{"billing":{"fullName":"Zoë Ångström"}}"#,
            ),
            check: |n| {
                let v: Value = serde_json::from_str(&n.payload).unwrap();
                assert_eq!(v["customer"]["billing"]["fullName"], "Zoë Ångström");
            },
        },
        Case {
            name: "negative refund amount",
            plain: plaintext(
                "ABCD1234",
                "RFND",
                r#","totalAccountAmount":-37.00,"totalOrderAmount":-37.00"#,
            ),
            check: |n| {
                assert_eq!(n.transaction_type, TransactionType::Rfnd);
                assert_eq!(n.total_account_amount.unwrap().to_string(), "-37.00");
                assert_eq!(n.total_order_amount, dec("-37"));
            },
        },
        Case {
            name: "many digits stay exact",
            plain: plaintext(
                "ABCD1234",
                "SALE",
                r#","totalAccountAmount":12345678901234567.89,"totalTaxAmount":0.10"#,
            ),
            check: |n| {
                assert_eq!(
                    n.total_account_amount.unwrap().to_string(),
                    "12345678901234567.89"
                );
                assert_eq!(n.total_tax_amount.unwrap().to_string(), "0.10");
            },
        },
        Case {
            name: "amounts as strings",
            plain: plaintext(
                "ABCD1234",
                "SALE",
                r#","totalAccountAmount":"1.00","totalShippingAmount":"4.95""#,
            ),
            check: |n| {
                assert_eq!(n.total_account_amount.unwrap().to_string(), "1.00");
                assert_eq!(n.total_shipping_amount, dec("4.95"));
            },
        },
        Case {
            name: "unknown fields and an unknown transaction type",
            plain: plaintext(
                "ABCD1234",
                "CUSTOMER_CHANGE",
                r#","someNewField":{"x":[1,2,null]},"version":8.0,"attemptCount":3"#,
            ),
            check: |n| {
                assert_eq!(
                    n.transaction_type,
                    TransactionType::Other("CUSTOMER_CHANGE".to_owned())
                );
                assert!(!n.transaction_type.is_test());
                assert_eq!(n.version.as_deref(), Some("8.0"));
                assert_eq!(n.attempt_count, 3);
            },
        },
        Case {
            name: "rebill receipt, null affiliate, absent role and attemptCount",
            plain: plaintext("ABCD1234-B002", "BILL", r#","affiliate":null"#),
            check: |n| {
                assert_eq!(n.receipt.as_str(), "ABCD1234-B002");
                assert_eq!(n.affiliate, None);
                assert!(n.role.is_empty());
                assert_eq!(n.attempt_count, 1);
                assert_eq!(n.transaction_time, utc(2014, 12, 20, 22, 3, 10));
            },
        },
        Case {
            name: "compact time format",
            plain: r#"{"transactionTime":"20220810T162015-0700","receipt":"X","transactionType":"SALE","role":"AFFILIATE"}"#.to_owned(),
            check: |n| {
                assert_eq!(n.transaction_time, utc(2022, 8, 10, 23, 20, 15));
                assert_eq!(n.role.as_str(), "AFFILIATE");
            },
        },
    ];
    let acct = account("main", &[SECRET]);
    for case in cases {
        let body = encrypt(SECRET, case.plain.as_bytes(), random_iv());
        let a = auth(body.as_bytes(), &[&acct]).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(a.notification.payload, case.plain, "{}", case.name);
        (case.check)(&a.notification);
    }
}

#[test]
fn full_block_padding_is_a_whole_block_of_0x10() {
    let mut plain = plaintext("ABCD1234", "SALE", "");
    while plain.len() % 16 != 0 {
        plain.insert(1, ' ');
    }
    let body = encrypt(SECRET, plain.as_bytes(), IV);
    let (notification, _) = envelope_members(&body);
    assert_eq!(
        STANDARD.decode(notification).unwrap().len(),
        plain.len() + 16
    );
    assert_eq!(decrypt(SECRET, body.as_bytes()).unwrap(), plain);
    let acct = account("main", &[SECRET]);
    assert_eq!(
        auth(body.as_bytes(), &[&acct])
            .unwrap()
            .notification
            .payload,
        plain
    );
}

#[test]
fn control_bytes_around_the_plaintext_are_trimmed() {
    let plain = plaintext("ABCD1234", "SALE", "");
    let padded = format!("\0\u{1a}{plain}\n\0");
    let body = encrypt(SECRET, padded.as_bytes(), IV);
    let acct = account("main", &[SECRET]);
    assert_eq!(
        auth(body.as_bytes(), &[&acct])
            .unwrap()
            .notification
            .payload,
        plain
    );
}

fn wrap76(s: &str, sep: &str) -> String {
    s.as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(sep)
}

#[test]
fn envelope_body_variants_are_accepted() {
    let f = fixture(V7);
    let (notification, iv) = envelope_members(&f.body);
    let escaped_slashes = f.body.replace('/', "\\/");
    let bodies = [
        (
            "escaped CRLF every 76",
            envelope_body(&wrap76(&notification, "\r\n"), &iv),
        ),
        (
            "escaped LF every 76",
            envelope_body(&wrap76(&notification, "\n"), &iv),
        ),
        (
            "raw CRLF every 76 (not valid JSON)",
            format!(
                r#"{{"notification":"{}","iv":"{iv}"}}"#,
                wrap76(&notification, "\r\n")
            ),
        ),
        (
            "missing padding",
            envelope_body(notification.trim_end_matches('='), iv.trim_end_matches('=')),
        ),
        ("escaped slashes, as PHP writes them", escaped_slashes),
        (
            "extra members, other order, whitespace",
            format!(
                "\n {{ \"attempt\": 2, \"iv\": \"{iv}\", \"notification\": \"{notification}\" }}\n"
            ),
        ),
    ];
    let acct = account("main", &[&f.secret]);
    let plain = f.expected["plaintext"].as_str().unwrap();
    for (name, body) in bodies {
        assert_eq!(
            recognise(body.as_bytes()),
            Some(BodyForm::Envelope),
            "{name}"
        );
        let a = auth(body.as_bytes(), &[&acct]).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(a.notification.payload, plain, "{name}");
    }
}

#[test]
fn key_rotation_and_multiple_accounts() {
    let plain = plaintext("ABCD1234", "SALE", "");
    let under_old = encrypt(OLD_SECRET, plain.as_bytes(), IV);
    let under_other = encrypt(OTHER_SECRET, plain.as_bytes(), IV);

    let main = account("main", &[SECRET, OLD_SECRET]);
    let other = account("other", &[OTHER_SECRET]);
    let a = auth(under_old.as_bytes(), &[&other, &main]).unwrap();
    assert_eq!((a.account.as_str(), a.key_index), ("main", 1));
    let a = auth(under_other.as_bytes(), &[&main, &other]).unwrap();
    assert_eq!((a.account.as_str(), a.key_index), ("other", 0));
    // The account list decides who is a candidate.
    assert_eq!(
        reject_of(auth(under_other.as_bytes(), &[&main])),
        Reject::NoKeyDecrypts
    );
    assert_eq!(
        reject_of(auth(under_other.as_bytes(), &[])),
        Reject::NoAccountForForm
    );
}

#[test]
fn the_most_advanced_failure_is_reported() {
    // Garbage under `other`'s key unpads fine but is not JSON: that beats `main`'s
    // padding failure whichever account comes first.
    let body = encrypt(OTHER_SECRET, b"not json at all", IV);
    let main = account("main", &[SECRET]);
    let other = account("other", &[OTHER_SECRET]);
    assert_eq!(
        reject_of(auth(body.as_bytes(), &[&main, &other])),
        Reject::BadJson
    );
    assert_eq!(
        reject_of(auth(body.as_bytes(), &[&other, &main])),
        Reject::BadJson
    );
}

// ---------------------------------------------------------------- corruption

fn flip_b64(b64: &str, index: impl Fn(usize) -> usize) -> String {
    let mut bytes = STANDARD.decode(b64).unwrap();
    let i = index(bytes.len());
    bytes[i] ^= 0x01;
    STANDARD.encode(bytes)
}

#[test]
fn every_corruption_is_rejected_the_same_way() {
    let plain = plaintext("ABCD1234", "SALE", r#","totalAccountAmount":1.00"#);
    let good = encrypt(SECRET, plain.as_bytes(), IV);
    let (ct, iv) = envelope_members(&good);
    let ct_bytes = STANDARD.decode(&ct).unwrap();
    let enc = |p: &str| encrypt(SECRET, p.as_bytes(), IV);

    // (name, body, the logged reason when it is deterministic)
    let cases: Vec<(&str, String, Option<Reject>)> = vec![
        (
            "flipped byte, last block",
            envelope_body(&flip_b64(&ct, |n| n - 1), &iv),
            None,
        ),
        (
            "flipped byte, first block",
            envelope_body(&flip_b64(&ct, |_| 3), &iv),
            None,
        ),
        (
            "flipped byte, middle",
            envelope_body(&flip_b64(&ct, |n| n / 2), &iv),
            None,
        ),
        (
            "flipped iv byte",
            envelope_body(&ct, &flip_b64(&iv, |_| 0)),
            Some(Reject::BadJson),
        ),
        (
            "truncated by one block",
            envelope_body(&STANDARD.encode(&ct_bytes[..ct_bytes.len() - 16]), &iv),
            None,
        ),
        (
            "truncated mid-block",
            envelope_body(&STANDARD.encode(&ct_bytes[..ct_bytes.len() - 5]), &iv),
            Some(Reject::BadCiphertextLength),
        ),
        (
            "wrong key",
            encrypt(OTHER_SECRET, plain.as_bytes(), IV),
            None,
        ),
        (
            "bad base64",
            envelope_body("!!!not base64!!!", &iv),
            Some(Reject::BadBase64),
        ),
        (
            "bad base64 in iv",
            envelope_body(&ct, "@@@@"),
            Some(Reject::BadBase64),
        ),
        (
            "iv of 15 bytes",
            envelope_body(&ct, &STANDARD.encode(&IV[..15])),
            Some(Reject::BadIvLength),
        ),
        (
            "iv hex-decoded to 8 bytes",
            envelope_body(
                &ct,
                &STANDARD.encode([0xA6, 0x23, 0x07, 0xB7, 0x31, 0x12, 0xFB, 0x7A]),
            ),
            Some(Reject::BadIvLength),
        ),
        (
            "empty notification",
            envelope_body("", &iv),
            Some(Reject::BadCiphertextLength),
        ),
        (
            "valid padding over garbage",
            enc("hello, world"),
            Some(Reject::BadJson),
        ),
        (
            "valid padding over a JSON array",
            enc("[1,2,3]"),
            Some(Reject::BadJson),
        ),
        ("valid padding over nothing", enc(""), Some(Reject::BadJson)),
        (
            "valid padding over bad UTF-8",
            encrypt(SECRET, b"{\"receipt\":\"\xff\xfe\"}", IV),
            Some(Reject::BadUtf8),
        ),
        (
            "missing receipt",
            enc(r#"{"transactionTime":"20220810T162015-0700","transactionType":"SALE"}"#),
            Some(Reject::MissingField("receipt")),
        ),
        (
            "missing time",
            enc(r#"{"receipt":"ABCD1234","transactionType":"SALE"}"#),
            Some(Reject::MissingField("transactionTime")),
        ),
        (
            "bad time",
            enc(r#"{"transactionTime":"yesterday","receipt":"X","transactionType":"SALE"}"#),
            Some(Reject::BadField("transactionTime")),
        ),
        (
            "receipt with a space",
            enc(&plaintext("ABCD 1234", "SALE", "")),
            Some(Reject::BadField("receipt")),
        ),
        (
            "amount that is not a number",
            enc(&plaintext("X", "SALE", r#","totalAccountAmount":"lots""#)),
            Some(Reject::BadField("totalAccountAmount")),
        ),
        (
            "a known field twice",
            enc(&plaintext("X", "SALE", r#","receipt":"Y""#)),
            Some(Reject::BadJson),
        ),
    ];

    let acct = account("main", &[SECRET]);
    assert!(auth(good.as_bytes(), &[&acct]).is_ok());
    let mut outside = Vec::new();
    for (name, body, want) in &cases {
        assert_eq!(
            recognise(body.as_bytes()),
            Some(BodyForm::Envelope),
            "{name}"
        );
        let result = auth(body.as_bytes(), &[&acct]);
        // What the HTTP layer can see: the variant, nothing else.
        outside.push(std::mem::discriminant(
            result.as_ref().map(|_| ()).unwrap_err(),
        ));
        let reason = reject_of(result);
        if let Some(want) = want {
            assert_eq!(reason, *want, "{name}");
        }
        // The log line carries no secret and no plaintext.
        let shown = format!("{reason} {reason:?} {}", InsError::Rejected(reason));
        assert!(
            !shown.contains(SECRET) && !shown.contains("ABCD"),
            "{name}: {shown}"
        );
    }
    let rejected = std::mem::discriminant(&InsError::Rejected(Reject::BadJson));
    assert!(outside.iter().all(|d| *d == rejected));
    assert_eq!(outside.len(), cases.len());
}

#[test]
fn decrypt_reports_the_same_failures() {
    let good = encrypt(SECRET, b"anything, not JSON", IV);
    assert_eq!(
        decrypt(SECRET, good.as_bytes()).unwrap(),
        "anything, not JSON"
    );
    assert_eq!(
        decrypt(SECRET, b"hello"),
        Err(InsError::Unrecognised),
        "not an envelope"
    );
    assert!(matches!(
        decrypt(OTHER_SECRET, good.as_bytes()),
        Err(InsError::Rejected(_))
    ));
}

#[test]
fn recognition() {
    let mut random = [0u8; 64];
    rand::Rng::fill(&mut rand::rng(), &mut random);
    let cases: [(&[u8], Option<BodyForm>); 17] = [
        (b"", None),
        (b"   ", None),
        (b"null", None),
        (b"[1]", None),
        (b"\"hello\"", None),
        (b"42", None),
        (b"hello", None),
        (b"a=1&b=2", None),
        (b"{\"a\":1", None),
        (b"\xff\xfe\x00garbage\x9c", None),
        (&random, None),
        (b"{}", Some(BodyForm::PlainJson)),
        (b"  {\"receipt\":\"X\"}\n", Some(BodyForm::PlainJson)),
        (
            b"{\"notification\":1,\"iv\":\"x\"}",
            Some(BodyForm::PlainJson),
        ),
        (b"{\"notification\":\"x\"}", Some(BodyForm::PlainJson)),
        (
            b"{\"notification\":\"\",\"iv\":\"\",\"x\":[]}",
            Some(BodyForm::Envelope),
        ),
        (b"a=1&cverify=ABCDEF12", Some(BodyForm::LegacyForm)),
    ];
    for (body, want) in cases {
        assert_eq!(recognise(body), want, "{:?}", String::from_utf8_lossy(body));
        if want.is_none() {
            let acct = account("main", &[SECRET]);
            assert_eq!(auth(body, &[&acct]).unwrap_err(), InsError::Unrecognised);
        }
    }
    assert_eq!(BodyForm::Envelope.as_str(), "envelope");
    assert_eq!(BodyForm::LegacyForm.as_str(), "legacy-form");
    assert_eq!(BodyForm::PlainJson.as_str(), "hmac-json");
}

// ---------------------------------------------------------------- legacy

/// The v1.0 scheme written out independently of the module.
fn v1_cverify(fields: &[(&str, &str)], secret: &str) -> String {
    use sha1::{Digest, Sha1};
    let order = [
        "ccustname",
        "ccustemail",
        "ccustcc",
        "ccuststate",
        "ctransreceipt",
        "cproditem",
        "ctransaction",
        "ctransaffiliate",
        "ctranspublisher",
        "cprodtype",
        "cprodtitle",
        "ctranspaymentmethod",
        "ctransamount",
        "caffitid",
        "cvendthru",
    ];
    let mut parts: Vec<&str> = order
        .iter()
        .map(|n| fields.iter().find(|(k, _)| k == n).map_or("", |(_, v)| *v))
        .collect();
    parts.push(secret);
    hex::encode_upper(Sha1::digest(parts.join("|").as_bytes()))[..8].to_owned()
}

fn form_body(fields: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

#[test]
fn legacy_cases() {
    let sale = fixture(LEGACY_SALE);
    let test = fixture(LEGACY_TEST);
    let secret = sale.secret.clone();
    let on = legacy_account("legacy", &[&secret]);
    let rotated = legacy_account("legacy", &["NEWKEY", &secret]);
    let off = account("legacy", &[&secret]);
    let stranger = legacy_account("x", &["NOPE"]);

    let v1_fields = [
        ("ccustname", "Zoë Ångström"),
        ("ctransreceipt", "ABCD1234"),
        ("ctransaction", "SALE"),
        ("ctranspublisher", "oldvendor"),
        ("ctransamount", "-3700"),
        ("ctranstime", "1383864458"),
    ];
    let v1_sig = v1_cverify(&v1_fields, &secret);
    let mut v1 = v1_fields.to_vec();
    v1.push(("cverify", v1_sig.as_str()));
    let v1_body = form_body(&v1);
    let mut v1_with_version = v1.clone();
    v1_with_version.insert(0, ("cnoticeversion", "4.0"));

    let cases: Vec<(&str, String, &AccountKeys, Expect)> = vec![
        ("sale", sale.body.clone(), &on, Ok(0)),
        ("previous key", sale.body.clone(), &rotated, Ok(1)),
        (
            "lowercase cverify",
            test.body.replace("=007806EC", "=007806ec"),
            &on,
            Ok(0),
        ),
        (
            "tampered amount",
            sale.body
                .replace("caccountamount=830", "caccountamount=930"),
            &on,
            Err(Reject::BadCverify),
        ),
        (
            "tampered cverify",
            sale.body.replace("=73707949", "=73707948"),
            &on,
            Err(Reject::BadCverify),
        ),
        (
            "wrong key",
            sale.body.clone(),
            &stranger,
            Err(Reject::BadCverify),
        ),
        (
            "legacy off",
            sale.body.clone(),
            &off,
            Err(Reject::NoAccountForForm),
        ),
        (
            "a field posted twice",
            format!("ctransreceipt=X&{}", sale.body),
            &on,
            Err(Reject::DuplicateField),
        ),
        ("v1.0 scheme", v1_body.clone(), &on, Ok(0)),
        (
            "v1.0 scheme refused when cnoticeversion is posted",
            form_body(&v1_with_version),
            &on,
            Err(Reject::BadCverify),
        ),
    ];
    for (name, body, acct, want) in cases {
        assert_eq!(
            recognise(body.as_bytes()),
            Some(BodyForm::LegacyForm),
            "{name}"
        );
        let got = auth(body.as_bytes(), &[acct]);
        match want {
            Ok(key_index) => {
                let a = got.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(
                    (a.key_index, a.form),
                    (key_index, BodyForm::LegacyForm),
                    "{name}"
                );
            }
            Err(reason) => assert_eq!(reject_of(got), reason, "{name}"),
        }
    }

    let n = auth(v1_body.as_bytes(), &[&on]).unwrap().notification;
    assert_eq!(n.vendor.as_deref(), Some("oldvendor"));
    assert_eq!(n.total_account_amount.unwrap().to_string(), "-37.00");
    assert_eq!(n.version, None);
    assert!(n.role.is_empty());
    let payload: Value = serde_json::from_str(&n.payload).unwrap();
    assert_eq!(payload["ccustname"], "Zoë Ångström");
}

#[test]
fn legacy_mapping_failures_after_a_good_cverify() {
    let secret = "LEGACYSECRET";
    let acct = legacy_account("legacy", &[secret]);
    let signed = |fields: &[(&str, &str)]| {
        let owned: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let cv = legacy_cverify(&owned, secret);
        let mut all = fields.to_vec();
        all.push(("cverify", cv.as_str()));
        form_body(&all)
    };
    let cases = [
        (
            vec![("ctransaction", "SALE"), ("ctranstime", "1")],
            Reject::MissingField("ctransreceipt"),
        ),
        (
            vec![
                ("ctransreceipt", "X"),
                ("ctransaction", "SALE"),
                ("ctranstime", ""),
            ],
            Reject::MissingField("ctranstime"),
        ),
        (
            vec![
                ("ctransreceipt", "X"),
                ("ctransaction", "SALE"),
                ("ctranstime", "soon"),
            ],
            Reject::BadField("ctranstime"),
        ),
        (
            vec![
                ("ctransreceipt", "X"),
                ("ctransaction", "SALE"),
                ("ctranstime", "1"),
                ("caccountamount", "8.30"),
            ],
            Reject::BadField("caccountamount"),
        ),
    ];
    for (fields, want) in cases {
        assert_eq!(reject_of(auth(signed(&fields).as_bytes(), &[&acct])), want);
    }
    // The cverify helper ignores a posted cverify.
    let f = fixture(LEGACY_SALE);
    let without: Vec<(String, String)> = form_fields(&f.body)
        .into_iter()
        .filter(|(k, _)| k != "cverify")
        .collect();
    assert_eq!(legacy_cverify(&without, &f.secret), "73707949");
}

// ---------------------------------------------------------------- HMAC mode

#[test]
fn hmac_hex_matches_a_known_vector() {
    assert_eq!(
        hmac_hex("key", b"The quick brown fox jumps over the lazy dog"),
        "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
    );
}

#[test]
fn hmac_cases() {
    let body = plaintext("ABCD1234", "SALE", r#","totalAccountAmount":"9.99""#);
    let sig = hmac_hex(SECRET, body.as_bytes());
    let old_sig = hmac_hex(OLD_SECRET, body.as_bytes());
    let bad_sig = hmac_hex(OTHER_SECRET, body.as_bytes());
    let on = hmac_account("relay", &[SECRET, OLD_SECRET]);
    let off = account("relay", &[SECRET]);

    let prefixed = format!("sha256={sig}");
    let upper = sig.to_uppercase();
    let upper_prefixed = format!("SHA256={upper}");
    let padded = format!(" {sig} ");
    let cases: Vec<(&str, Option<&str>, &AccountKeys, Expect)> = vec![
        ("lowercase hex", Some(&sig), &on, Ok(0)),
        ("sha256= prefix", Some(&prefixed), &on, Ok(0)),
        ("uppercase hex", Some(&upper), &on, Ok(0)),
        (
            "uppercase prefix and hex",
            Some(&upper_prefixed),
            &on,
            Ok(0),
        ),
        ("surrounding spaces", Some(&padded), &on, Ok(0)),
        ("previous key", Some(&old_sig), &on, Ok(1)),
        (
            "bad signature",
            Some(&bad_sig),
            &on,
            Err(Reject::BadSignature),
        ),
        (
            "truncated signature",
            Some(&sig[..63]),
            &on,
            Err(Reject::BadSignature),
        ),
        ("not hex", Some("zz"), &on, Err(Reject::BadSignature)),
        ("empty header", Some(""), &on, Err(Reject::BadSignature)),
        ("missing header", None, &on, Err(Reject::MissingSignature)),
        (
            "HMAC mode off",
            Some(&sig),
            &off,
            Err(Reject::NoAccountForForm),
        ),
    ];
    assert_eq!(recognise(body.as_bytes()), Some(BodyForm::PlainJson));
    for (name, value, acct, want) in cases {
        let header = |n: &str| if n == SIG_HEADER { value } else { None };
        let got = authenticate(body.as_bytes(), &header, &[acct]);
        match want {
            Ok(key_index) => {
                let a = got.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(
                    (a.key_index, a.form),
                    (key_index, BodyForm::PlainJson),
                    "{name}"
                );
                assert_eq!(a.notification.payload, body);
                assert_eq!(a.notification.total_account_amount, dec("9.99"));
            }
            Err(reason) => assert_eq!(reject_of(got), reason, "{name}"),
        }
    }

    // Authentic but not a notification.
    let no_receipt = r#"{"transactionTime":"2014-12-20T14:03:10-08:00","transactionType":"SALE"}"#;
    let sig = hmac_hex(SECRET, no_receipt.as_bytes());
    let header = |n: &str| (n == SIG_HEADER).then_some(sig.as_str());
    assert_eq!(
        reject_of(authenticate(no_receipt.as_bytes(), &header, &[&on])),
        Reject::MissingField("receipt")
    );
}

// ---------------------------------------------------------------- helpers

#[test]
fn encrypt_then_authenticate_round_trip() {
    let plain = plaintext("ABCD1234", "SALE", "");
    let iv = random_iv();
    let body = encrypt(SECRET, plain.as_bytes(), iv);
    let (_, iv_b64) = envelope_members(&body);
    assert_eq!(STANDARD.decode(iv_b64).unwrap(), iv);
    assert!(body.starts_with(r#"{"notification":""#) && body.ends_with(r#""}"#));
    let acct = account("main", &[SECRET]);
    let a = auth(body.as_bytes(), &[&acct]).unwrap();
    assert_eq!(a.notification.payload, plain);
    assert_eq!(a.notification.transaction_type, TransactionType::Sale);
}

#[test]
fn random_iv_is_16_uppercase_hex_characters() {
    let ivs: Vec<[u8; 16]> = (0..8).map(|_| random_iv()).collect();
    for iv in &ivs {
        assert!(
            iv.iter()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b)),
            "{iv:?}"
        );
    }
    assert!(ivs.windows(2).any(|w| w[0] != w[1]));
}

#[test]
fn debug_output_hides_the_payload() {
    let plain = plaintext(
        "ABCD1234",
        "SALE",
        r#","customer":{"email":"zoe@example.com"}"#,
    );
    let body = encrypt(SECRET, plain.as_bytes(), IV);
    let a = auth(body.as_bytes(), &[&account("main", &[SECRET])]).unwrap();
    let shown = format!("{a:?}");
    assert!(!shown.contains("zoe@example.com"), "{shown}");
    assert!(shown.contains("ABCD1234"));
}
