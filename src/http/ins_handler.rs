//! `POST {ins_path}` and `POST {ins_path}/{account}`: resolve the source,
//! authenticate the raw bytes, commit, and only then answer 200.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};

use super::server::Peer;
use super::{client_ip, AppState, IngestError};
use crate::ins::{self, AccountKeys, InsError};
use crate::store::{NewNotification, NewRejected, Recorded, StoreError};

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
            (StatusCode::OK, "OK").into_response()
        }
        Err(e) => {
            let latency_us = started.elapsed().as_micros() as u64;
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
        Some(name) => {
            let i = *state.by_name.get(name).ok_or(IngestError::UnknownAccount)?;
            vec![&state.accounts[i]]
        }
        None => state.accounts.iter().collect(),
    }
    .into_iter()
    .filter(|a| a.allowed_ips.is_empty() || client_ip::contains(&a.allowed_ips, ip))
    .map(|a| &a.keys)
    .collect();
    if candidates.is_empty() {
        return Err(IngestError::SourceNotAllowed);
    }
    if let Some(wait) = state.limiter.blocked(ip) {
        return Err(IngestError::RateLimited(wait));
    }
    let body = body?;
    if ins::recognise(&body).is_none() {
        return Err(IngestError::Unrecognised);
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let auth = match ins::authenticate(&body, &header, &candidates) {
        Ok(auth) => auth,
        Err(InsError::Unrecognised) => return Err(IngestError::Unrecognised),
        Err(InsError::Rejected(reason)) => {
            if state.limiter.failed(ip) {
                tracing::warn!(%ip, "ins: authentication failure limit reached; answering 429 for the rest of the minute");
            }
            let signature = candidates
                .iter()
                .filter_map(|a| a.hmac_header.as_deref())
                .find_map(header);
            keep_rejected(
                state,
                ip,
                account,
                &reason.to_string(),
                &body,
                signature,
                received_at,
            )
            .await;
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

/// Best effort: a rejected post is kept for `kaching rejected reprocess`, but
/// failing to keep it must not change the answer.
async fn keep_rejected(
    state: &AppState,
    ip: IpAddr,
    account: Option<&str>,
    reason: &str,
    body: &[u8],
    signature: Option<&str>,
    received_at: DateTime<Utc>,
) {
    let row = NewRejected {
        received_at,
        source_ip: Some(ip),
        account_hint: account,
        reason,
        body,
        signature,
    };
    match tokio::time::timeout(
        state.commit_timeout,
        state.store.record_rejected(&row, state.rejected_max_rows),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "ins: cannot keep the rejected post"),
        Err(_) => tracing::warn!("ins: keeping the rejected post timed out"),
    }
}
