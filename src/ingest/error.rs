//! Every way a post can fail to become a stored notification. The HTTP
//! layer maps each to a status (`http::error`); the CLI and tests read them
//! as they are.

use std::time::Duration;

use crate::ins::Reject;
use crate::store::StoreError;

/// Why a body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the body is larger than server.max_body_bytes")]
    TooLarge,
    #[error("the body could not be read")]
    Unreadable,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("source address not allowed")]
    SourceNotAllowed,
    #[error("no such account")]
    UnknownAccount,
    #[error("too many authentication failures from this address")]
    RateLimited(Duration),
    #[error("cannot read the body: {0}")]
    Body(BodyError),
    #[error("body is not a recognised INS form")]
    Unrecognised,
    #[error("authentication failed: {0}")]
    Rejected(Reject),
    #[error("store unavailable: {0}")]
    Unavailable(StoreError),
}

impl IngestError {
    /// True for the refusals that must not tell by their timing which check
    /// failed: every 403.
    pub fn is_forbidden(&self) -> bool {
        matches!(
            self,
            IngestError::SourceNotAllowed | IngestError::UnknownAccount | IngestError::Rejected(_)
        )
    }

    /// Every value [`IngestError::outcome`] returns: the metrics create one
    /// series per value at startup.
    pub const OUTCOMES: [&'static str; 8] = [
        "ip-denied",
        "unknown-account",
        "rate-limited",
        "too-large",
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
            IngestError::Body(BodyError::TooLarge) => "too-large",
            IngestError::Body(BodyError::Unreadable) => "bad-body",
            IngestError::Unrecognised => "unrecognised",
            IngestError::Rejected(_) => "rejected",
            IngestError::Unavailable(_) => "unavailable",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_lists_every_outcome() {
        for e in [
            IngestError::SourceNotAllowed,
            IngestError::UnknownAccount,
            IngestError::RateLimited(Duration::from_secs(1)),
            IngestError::Body(BodyError::TooLarge),
            IngestError::Body(BodyError::Unreadable),
            IngestError::Unrecognised,
            IngestError::Rejected(Reject::NoKeyDecrypts),
            IngestError::Unavailable(StoreError::Failing),
        ] {
            assert!(
                IngestError::OUTCOMES.contains(&e.outcome()),
                "{}",
                e.outcome()
            );
        }
    }
}
