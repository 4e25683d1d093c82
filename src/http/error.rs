//! Every way a post to the INS endpoint can fail, and its answer. Bodies are
//! fixed and opaque: in particular every key-dependent failure gets the same
//! 403, or CBC's malleability would turn the endpoint into a padding oracle.

use std::time::Duration;

use axum::extract::rejection::BytesRejection;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::ins::Reject;
use crate::store::StoreError;

/// The one body of every 403.
pub const FORBIDDEN_BODY: &str = "forbidden\n";

/// How long ClickBank (or a proxy) is asked to wait after a 503.
const RETRY_AFTER_UNAVAILABLE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("source address not allowed")]
    SourceNotAllowed,
    #[error("no such account")]
    UnknownAccount,
    #[error("too many authentication failures from this address")]
    RateLimited(Duration),
    #[error("cannot read the body: {0}")]
    Body(#[from] BytesRejection),
    #[error("body is not a recognised INS form")]
    Unrecognised,
    #[error("authentication failed: {0}")]
    Rejected(Reject),
    #[error("store unavailable: {0}")]
    Unavailable(StoreError),
}

impl IngestError {
    /// True for the refusals that must not tell by their timing which check
    /// failed: every 403 (see [`REFUSAL_FLOOR`](super::ins_handler)).
    pub fn is_forbidden(&self) -> bool {
        matches!(
            self,
            IngestError::SourceNotAllowed | IngestError::UnknownAccount | IngestError::Rejected(_)
        )
    }

    /// Every value [`IngestError::outcome`] returns: the metrics create one
    /// series per value at startup.
    pub const OUTCOMES: [&'static str; 7] = [
        "ip-denied",
        "unknown-account",
        "rate-limited",
        "bad-body",
        "unrecognised",
        "rejected",
        "unavailable",
    ];

    /// A short machine-friendly label for the log line and the metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            IngestError::SourceNotAllowed => "ip-denied",
            IngestError::UnknownAccount => "unknown-account",
            IngestError::RateLimited(_) => "rate-limited",
            IngestError::Body(_) => "bad-body",
            IngestError::Unrecognised => "unrecognised",
            IngestError::Rejected(_) => "rejected",
            IngestError::Unavailable(_) => "unavailable",
        }
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        match self {
            // An unknown account in the path answers exactly as a wrong key,
            // so account names cannot be probed for.
            IngestError::SourceNotAllowed
            | IngestError::UnknownAccount
            | IngestError::Rejected(_) => (StatusCode::FORBIDDEN, FORBIDDEN_BODY).into_response(),
            IngestError::RateLimited(wait) => (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, wait.as_secs().max(1).to_string())],
                "too many failures\n",
            )
                .into_response(),
            // 413 for an oversized body, 400 for one that could not be read;
            // fixed bodies, like every other refusal.
            IngestError::Body(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload too large\n").into_response()
            }
            IngestError::Body(_) => (StatusCode::BAD_REQUEST, "bad request\n").into_response(),
            IngestError::Unrecognised => (StatusCode::BAD_REQUEST, "bad request\n").into_response(),
            IngestError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(
                    header::RETRY_AFTER,
                    RETRY_AFTER_UNAVAILABLE.as_secs().to_string(),
                )],
                "temporarily unavailable\n",
            )
                .into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_lists_every_outcome() {
        let reject = crate::ins::Reject::NoKeyDecrypts;
        for e in [
            IngestError::SourceNotAllowed,
            IngestError::UnknownAccount,
            IngestError::RateLimited(Duration::from_secs(1)),
            IngestError::Unrecognised,
            IngestError::Rejected(reject),
            IngestError::Unavailable(StoreError::Failing),
        ] {
            assert!(
                IngestError::OUTCOMES.contains(&e.outcome()),
                "{}",
                e.outcome()
            );
        }
        // `Body` needs an axum rejection to build; its label is fixed here.
        assert!(IngestError::OUTCOMES.contains(&"bad-body"));
    }
}
