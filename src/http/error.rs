//! The answer to every way a post to the INS endpoint can fail. Bodies are
//! fixed and opaque: in particular every key-dependent failure gets the same
//! 403, or CBC's malleability would turn the endpoint into a padding oracle.

use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::ingest::{BodyError, IngestError};

/// The one body of every 403.
pub const FORBIDDEN_BODY: &str = "forbidden\n";

/// How long ClickBank (or a proxy) is asked to wait after a 503.
const RETRY_AFTER_UNAVAILABLE: Duration = Duration::from_secs(30);

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
            IngestError::Body(BodyError::TooLarge) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload too large\n").into_response()
            }
            IngestError::Body(BodyError::Unreadable) => {
                (StatusCode::BAD_REQUEST, "bad request\n").into_response()
            }
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
