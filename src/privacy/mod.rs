//! Customer data at rest: what of a notification is personal ([`split`]),
//! the keys that seal it ([`keys`]), and the binding of a sealed value to
//! its row ([`row_aad`]). The store keeps the personal part sealed and the
//! rest (what reports and alerts read) in clear; actions that need it open
//! it at run time.

pub mod erase;
pub mod keys;
pub mod split;

use chrono::{DateTime, Utc};

pub use keys::{generate, DataKeys, KeyError};
pub use split::{mask_email, restore, split, Split};

/// The associated data of a notification's sealed customer data: its dedup
/// key, so the ciphertext opens in that row only.
pub fn row_aad(
    account: &str,
    role: &str,
    receipt: &str,
    transaction_type: &str,
    time: DateTime<Utc>,
) -> Vec<u8> {
    let mut aad = b"kaching notification customer\0".to_vec();
    for part in [account, role, receipt, transaction_type] {
        aad.extend_from_slice(part.as_bytes());
        aad.push(0);
    }
    aad.extend_from_slice(time.to_rfc3339().as_bytes());
    aad
}

/// Opens a stored notification's sealed customer data.
pub fn open_customer(
    keys: &DataKeys,
    n: &crate::store::StoredNotification,
    sealed: &str,
) -> Result<String, KeyError> {
    let x = &n.notification;
    let aad = row_aad(
        n.account.as_str(),
        x.role.as_str(),
        x.receipt.as_str(),
        x.transaction_type.as_str(),
        x.transaction_time,
    );
    let bytes = keys.open(&aad, sealed)?;
    String::from_utf8(bytes).map_err(|_| KeyError::Corrupt)
}

/// Cuts the personal data out of `n`'s payload (which keeps the rest) and
/// seals it for its row; returns it sealed, and the email's blind index.
pub fn seal_customer(
    keys: &DataKeys,
    account: &crate::ins::AccountName,
    form: crate::ins::BodyForm,
    n: &mut crate::ins::Notification,
) -> (Option<String>, Option<String>) {
    let cut = split(&n.payload, form);
    let Some(personal) = cut.personal else {
        return (None, None);
    };
    let aad = row_aad(
        account.as_str(),
        n.role.as_str(),
        n.receipt.as_str(),
        n.transaction_type.as_str(),
        n.transaction_time,
    );
    n.payload = cut.clear;
    (
        Some(keys.seal(&aad, personal.as_bytes())),
        cut.email.map(|e| keys.email_index(&e)),
    )
}

/// The associated data of a kept rejected post: when it arrived (to the
/// microsecond, as both databases keep it) and from where.
pub fn rejected_aad(received_at: DateTime<Utc>, source_ip: Option<&str>) -> Vec<u8> {
    let mut aad = b"kaching rejected\0".to_vec();
    aad.extend_from_slice(
        received_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            .as_bytes(),
    );
    aad.push(0);
    aad.extend_from_slice(source_ip.unwrap_or("").as_bytes());
    aad
}
