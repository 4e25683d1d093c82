//! `GET /events`: the live feed, server-sent events from the post-commit
//! channel. One event per new notification (retries are not news), with
//! the buyer masked (`j***@example.com`) and nothing else of the customer.
//! A slow viewer lags and misses events; it never slows an acknowledgement.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};

use super::AdminState;
use crate::ingest::Committed;
use crate::ins::{AccountName, Notification};
use crate::report::facts::{masked_email, money_text, Facts};
use crate::store::StoredNotification;

/// What the feed shows of a notification.
#[derive(Debug, serde::Serialize)]
pub struct LiveItem {
    pub id: i64,
    pub account: String,
    pub time: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub receipt: String,
    pub product: String,
    pub amount: String,
    pub currency: String,
    pub affiliate: String,
    pub email: String,
}

impl LiveItem {
    pub fn of(c: &Committed) -> LiveItem {
        LiveItem::new(c.id, &c.account, &c.notification)
    }

    /// The same for a stored notification (the rows the page starts with).
    pub fn of_stored(s: &StoredNotification) -> LiveItem {
        LiveItem::new(s.id, &s.account, &s.notification)
    }

    fn new(id: i64, account: &AccountName, n: &Notification) -> LiveItem {
        let facts = Facts::of(n);
        LiveItem {
            id,
            account: account.to_string(),
            time: n
                .transaction_time
                .format("%Y-%m-%d %H:%M:%S UTC")
                .to_string(),
            kind: n.transaction_type.to_string(),
            receipt: n.receipt.to_string(),
            product: facts
                .lines
                .first()
                .map(|l| l.title.clone())
                .unwrap_or_default(),
            amount: money_text(facts.micros),
            currency: facts.currency,
            affiliate: facts.affiliate,
            email: masked_email(&n.payload).unwrap_or_default(),
        }
    }
}

pub async fn events(
    State(state): State<Arc<AdminState>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = BroadcastStream::new(state.commits.subscribe()).filter_map(|c| {
        let c = c.ok()?;
        if !c.new {
            return None;
        }
        let item = LiveItem::of(&c);
        Some(Ok(Event::default()
            .event("notification")
            .json_data(item)
            .unwrap_or_default()))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
