//! `POST {ins_path}` and `POST {ins_path}/{account}`: resolve the source,
//! authenticate the raw bytes, commit, and only then answer 200.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;

use super::server::Peer;
use super::{client_ip, AppState, IngestError};
use crate::ins::{self, AccountKeys, BodyForm, InsError};
use crate::store::{NewNotification, NewRejected, Recorded, StoreError};

/// Every 403 is sent no sooner than this after the request's body arrived.
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
    let ip = client_ip::resolve(peer.0.ip(), headers, &state.trusted_proxies);
    match ingest(state, ip, account.as_deref(), headers, body).await {
        Ok((auth, key_index, recorded)) => {
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
            if e.is_forbidden() {
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
                _ => tracing::warn!(
                    outcome = e.outcome(), reason = %e, account, %ip, latency_us,
                    "ins: refused"
                ),
            }
            e.into_response()
        }
    }
}

async fn ingest(
    state: &AppState,
    ip: IpAddr,
    account: Option<&str>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(NewNotification, usize, Recorded), IngestError> {
    let received_at = Utc::now();
    if !state.allowed_ips.is_empty() && !client_ip::contains(&state.allowed_ips, ip) {
        return Err(IngestError::SourceNotAllowed);
    }
    let candidates: Vec<&AccountKeys> = match account {
        Some(name) => match state.by_name.get(name) {
            Some(&i) => vec![&state.accounts[i]],
            None => {
                // Kept like any refused post (a mistyped account in ClickBank's
                // URL shows in `kaching rejected`), which also makes its
                // refusal cost what a wrong key's does.
                if let Ok(body) = &body {
                    state.rejected.keep(NewRejected {
                        received_at,
                        source_ip: Some(ip),
                        account_hint: Some(name.to_owned()),
                        reason: "no such account".to_owned(),
                        body: body.to_vec(),
                        signature: None,
                    });
                }
                return Err(IngestError::UnknownAccount);
            }
        },
        None => state.accounts.iter().collect(),
    }
    .into_iter()
    .filter(|a| a.allowed_ips.is_empty() || client_ip::contains(&a.allowed_ips, ip))
    .map(|a| &a.keys)
    .collect();
    if candidates.is_empty() {
        return Err(IngestError::SourceNotAllowed);
    }
    let body = body?;
    let form = ins::recognise(&body).ok_or(IngestError::Unrecognised)?;
    // Only a legacy cverify (32 bits) can be guessed; limiting other forms
    // would only let a forger lock ClickBank's own posts out.
    let guessable = form == BodyForm::LegacyForm;
    if guessable {
        if let Some(wait) = state.limiter.blocked(ip) {
            return Err(IngestError::RateLimited(wait));
        }
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let auth = match ins::authenticate(&body, &header, &candidates) {
        Ok(auth) => auth,
        Err(InsError::Unrecognised) => return Err(IngestError::Unrecognised),
        Err(InsError::Rejected(reason)) => {
            if guessable && state.limiter.failed(ip) {
                tracing::warn!(%ip, "ins: cverify failure limit reached; answering 429 to legacy posts for the rest of the minute");
            }
            let signature = candidates
                .iter()
                .filter_map(|a| a.hmac_header.as_deref())
                .find_map(header);
            state.rejected.keep(NewRejected {
                received_at,
                source_ip: Some(ip),
                account_hint: account.map(str::to_owned),
                reason: reason.to_string(),
                body: body.to_vec(),
                signature: signature.map(str::to_owned),
            });
            return Err(IngestError::Rejected(reason));
        }
    };
    let new = NewNotification {
        actions: state
            .actions
            .matching(auth.account.as_str(), &auth.notification),
        account: auth.account,
        form: auth.form,
        notification: Arc::new(auth.notification),
        source_ip: Some(ip),
        received_at,
    };
    let key_index = auth.key_index;
    let recorded = tokio::time::timeout(state.commit_timeout, state.writer.record(new.clone()))
        .await
        .map_err(|_| StoreError::Timeout(state.commit_timeout))
        .and_then(|r| r)
        .map_err(IngestError::Unavailable)?;
    if let Recorded::New { runs, .. } = &recorded {
        state.dispatcher.notify(runs);
    }
    Ok((new, key_index, recorded))
}
