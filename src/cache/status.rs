//! `Cache-Status` (RFC 9211): how this cache handled a response, on every response from a
//! route with a cache or with coalescing. `collapsed` is RFC 9211's word (§2.5) for what a
//! flight's follower is: its request was collapsed into another one going forward.

use std::fmt::Write;

use http::header::{HeaderName, HeaderValue};
use http::StatusCode;

pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Why a request went forward (RFC 9211 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// The cache was not consulted: the route has no cache.
    Bypass,
    /// The method is not one the cache answers.
    Method,
    /// The request could not be answered from the cache (Range, other conditions, a body).
    Request,
    /// Nothing stored for the URI.
    UriMiss,
    /// Something stored for the URI, but not for this request's `Vary` values.
    VaryMiss,
    /// A stored response that was stale, or must be revalidated.
    Stale,
    /// A part of the response was stored; the request asked for more (RFC 9211 §2.2).
    Partial,
}

impl Forward {
    fn as_str(self) -> &'static str {
        match self {
            Forward::Bypass => "bypass",
            Forward::Method => "method",
            Forward::Request => "request",
            Forward::UriMiss => "uri-miss",
            Forward::VaryMiss => "vary-miss",
            Forward::Stale => "stale",
            Forward::Partial => "partial",
        }
    }
}

/// One response's entry in `Cache-Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from the cache without going forward; `ttl` is the seconds of freshness left,
    /// negative when served stale.
    Hit { ttl: i64 },
    /// Went forward (or joined a flight that did: `collapsed`).
    Forward {
        reason: Forward,
        /// The status the forward request got, if it got one.
        status: Option<StatusCode>,
        /// The response was stored (or a stored one renewed).
        stored: bool,
        collapsed: bool,
        /// Set when a stale stored response was served in the end (stale-if-error).
        ttl: Option<i64>,
    },
}

thread_local! {
    /// The last value made on this thread: nearly every response of a busy route carries the
    /// same one (`fwd=uri-miss; fwd-status=200`), and a clone of it costs a reference count
    /// where a new one costs formatting and an allocation.
    static LAST: std::cell::RefCell<Option<(CacheStatus, String, HeaderValue)>> =
        const { std::cell::RefCell::new(None) };
}

impl CacheStatus {
    /// The field value, `name` being the cache's name (an sf-token).
    pub fn header_value(&self, name: &str) -> HeaderValue {
        let cached = LAST.with_borrow(|last| match last {
            Some((status, named, value)) if status == self && named == name => Some(value.clone()),
            _ => None,
        });
        if let Some(value) = cached {
            return value;
        }
        let value = self.format(name);
        LAST.set(Some((*self, name.to_owned(), value.clone())));
        value
    }

    fn format(&self, name: &str) -> HeaderValue {
        let mut text = String::with_capacity(64);
        text.push_str(name);
        match *self {
            CacheStatus::Hit { ttl } => {
                let _ = write!(text, "; hit; ttl={ttl}");
            }
            CacheStatus::Forward {
                reason,
                status,
                stored,
                collapsed,
                ttl,
            } => {
                let _ = write!(text, "; fwd={}", reason.as_str());
                if let Some(status) = status {
                    let _ = write!(text, "; fwd-status={}", status.as_u16());
                }
                if let Some(ttl) = ttl {
                    let _ = write!(text, "; ttl={ttl}");
                }
                if stored {
                    text.push_str("; stored");
                }
                if collapsed {
                    text.push_str("; collapsed");
                }
            }
        }
        HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("coalesce-proxy"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9211_2_the_parameters_in_order() {
        assert_eq!(
            CacheStatus::Hit { ttl: 42 }.header_value("edge"),
            "edge; hit; ttl=42"
        );
        assert_eq!(
            CacheStatus::Hit { ttl: -3 }.header_value("edge"),
            "edge; hit; ttl=-3"
        );
        let follower = CacheStatus::Forward {
            reason: Forward::UriMiss,
            status: Some(StatusCode::OK),
            stored: true,
            collapsed: true,
            ttl: None,
        };
        assert_eq!(
            follower.header_value("edge"),
            "edge; fwd=uri-miss; fwd-status=200; stored; collapsed"
        );
        let failed = CacheStatus::Forward {
            reason: Forward::Bypass,
            status: None,
            stored: false,
            collapsed: false,
            ttl: None,
        };
        assert_eq!(failed.header_value("edge"), "edge; fwd=bypass");
    }
}
