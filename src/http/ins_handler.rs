//! `POST {ins_path}` and `POST {ins_path}/{account}`: resolve the source
//! address, hand the post to the ingest pipeline, log, and map the outcome to
//! a status (200 only after the commit).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;

use super::server::Peer;
use super::{client_ip, AppState};
use crate::ingest::{BodyError, IngestError, Post};
use crate::store::Recorded;

/// Every 403 (and every 429, which may stand for one) is sent no sooner than
/// this after the request's body arrived.
/// The checks behind a 403 take different times (a wrong key fails at the
/// padding, a right key with bad JSON a few microseconds later, an unknown
/// account before any decryption); waiting until a fixed instant, on a timer
/// whose ticks are a millisecond apart, hides those differences, at the cost
/// of an idle task per refused post. Genuine posts never wait for it.
const REFUSAL_FLOOR: Duration = Duration::from_millis(2);

pub async fn receive_any(
    State(state): State<Arc<AppState>>,
    peer: Peer,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    receive(&state, peer, None, &headers, body).await
}

pub async fn receive_for(
    State(state): State<Arc<AppState>>,
    peer: Peer,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    receive(&state, peer, Some(account), &headers, body).await
}

async fn receive(
    state: &AppState,
    peer: Peer,
    account: Option<String>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let ip = client_ip::resolve(
        peer.0.ip(),
        headers,
        &state.ingest.runtime().trusted_proxies,
    );
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let post = Post {
        source_ip: ip,
        account_hint: account.as_deref(),
        body: body.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                BodyError::TooLarge
            } else {
                BodyError::Unreadable
            }
        }),
        header: &header,
        received_at: Utc::now(),
    };
    match state.ingest.ingest(post).await {
        Ok(accepted) => {
            let (auth, key_index, recorded) =
                (accepted.notification, accepted.key_index, accepted.recorded);
            let n = &auth.notification;
            let (outcome, id) = match &recorded {
                Recorded::New { id, .. } => ("accepted", *id),
                Recorded::Duplicate { id, .. } => ("duplicate", *id),
            };
            let key = if key_index == 0 {
                "current".to_owned()
            } else {
                format!("previous[{}]", key_index - 1)
            };
            tracing::info!(
                outcome,
                id,
                account = %auth.account,
                receipt = %n.receipt,
                r#type = %n.transaction_type,
                role = %n.role,
                attempt = n.attempt_count,
                form = auth.form.as_str(),
                key,
                %ip,
                latency_us = started.elapsed().as_micros() as u64,
                "ins: notification"
            );
            if let Recorded::Duplicate {
                differs: true, id, ..
            } = recorded
            {
                tracing::warn!(
                    id,
                    account = %auth.account,
                    receipt = %n.receipt,
                    r#type = %n.transaction_type,
                    "ins: a duplicate differs from the stored notification in more than attemptCount; kept the first"
                );
            }
            let account = Some(auth.account.as_str());
            state
                .metrics
                .notification(account, outcome, started.elapsed());
            (StatusCode::OK, "OK").into_response()
        }
        Err(e) => {
            if e.is_forbidden() || matches!(e, IngestError::RateLimited(_)) {
                tokio::time::sleep_until((started + REFUSAL_FLOOR).into()).await;
            }
            let latency_us = started.elapsed().as_micros() as u64;
            // An account not configured counts as none (see `Metrics::notification`).
            state
                .metrics
                .notification(account.as_deref(), e.outcome(), started.elapsed());
            let account = account.as_deref().unwrap_or("");
            match &e {
                IngestError::Unavailable(cause) => tracing::error!(
                    outcome = e.outcome(), error = %cause, account, %ip, latency_us,
                    "ins: cannot commit; answered 503 so ClickBank retries"
                ),
                // Past the address's failure limit: one warning said so, a
                // line per post would let a flood fill the log.
                IngestError::RateLimited(_) => tracing::debug!(
                    outcome = e.outcome(), account, %ip, latency_us,
                    "ins: refused (failure limit)"
                ),
                _ => tracing::warn!(
                    outcome = e.outcome(), reason = %e, account, %ip, latency_us,
                    "ins: refused"
                ),
            }
            e.into_response()
        }
    }
}
