//! Every way an upstream fetch can fail, as one `Clone` error: a coalesced flight hands the
//! same error to all of its clients. A flight's own ends (cancelled, a client cut off) are the
//! flight's error (`coalesce`), not this one.

use std::time::Duration;

use http::StatusCode;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why an upstream fetch did not deliver a whole response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("connecting to upstream {upstream}: {reason}")]
    Connect { upstream: String, reason: String },
    #[error("upstream {upstream} has no healthy address: every one failed recently")]
    NoHealthyAddress { upstream: String },
    #[error("upstream {upstream} sent no response head within {timeout:?}")]
    ResponseTimeout { upstream: String, timeout: Duration },
    #[error("upstream {upstream} failed before the response head: {reason}")]
    BeforeHead { upstream: String, reason: String },
    #[error("upstream body stalled for longer than {0:?}")]
    IdleTimeout(Duration),
    #[error("upstream body failed: {0}")]
    Body(String),
    /// The client's request cannot be turned into an upstream request (its target).
    #[error("request cannot be forwarded: {0}")]
    BadRequest(String),
    /// The upstream's concurrency limit was reached and its queue was full, or the request
    /// waited past `queue_timeout`.
    #[error("upstream {upstream} is at its concurrency limit: {reason}")]
    Overloaded { upstream: String, reason: String },
}

impl FetchError {
    /// The status a client gets when this happens before the response head.
    pub fn status(&self) -> StatusCode {
        match self {
            FetchError::ResponseTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            FetchError::BadRequest(_) => StatusCode::BAD_REQUEST,
            FetchError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Connect { .. } => "connect",
            FetchError::NoHealthyAddress { .. } => "no_healthy_address",
            FetchError::ResponseTimeout { .. } => "response_timeout",
            FetchError::BeforeHead { .. } => "before_head",
            FetchError::IdleTimeout(_) => "idle_timeout",
            FetchError::Body(_) => "body",
            FetchError::BadRequest(_) => "bad_request",
            FetchError::Overloaded { .. } => "overloaded",
        }
    }
}

/// `err: cause: cause`, because hyper's top-level messages ("client error (Connect)") say
/// little on their own.
pub(super) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
