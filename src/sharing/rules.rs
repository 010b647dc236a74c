//! The sharing rules: which requests may join a flight (or be answered from the cache), and
//! which responses may be handed to anyone but the client that caused them.
//!
//! A request may share when its route coalesces its method, it carries no body, and (with
//! `credentials = "pass"`) no Authorization or Cookie. A response may be shared unless one of
//! the route's `not_shareable` rules matches it (by default: `Set-Cookie`,
//! `Cache-Control: private` or `no-store`, `Vary: *`). `Vary` on a shareable response narrows
//! who may share it to clients whose values for the named headers match the leader's.
//!
//! This module only judges; the flight, the cache and the proxy act on the verdicts.

use http::header::{self, HeaderMap, HeaderName};
use http::{request, StatusCode};

use crate::config::{CoalescePolicy, Credentials, ResponseRule};

/// Request headers that make a request ask for something other than the plain resource: a
/// part of it, or a conditional answer. Their values are part of the coalescing key, so a
/// 206 or 304 only ever reaches clients that sent exactly the same headers.
pub static RANGE_AND_CONDITIONAL: [HeaderName; 6] = [
    header::RANGE,
    header::IF_RANGE,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
];

/// The comma-separated tokens of every `name` header as written (compare them without case),
/// without parameters (`private="set-cookie"` counts as `private`). Borrowed: judging a
/// response allocates nothing.
pub fn raw_tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|token| token.split(['=', ';']).next().unwrap_or("").trim())
        .filter(|token| !token.is_empty())
}

/// [`raw_tokens`], lower-cased.
pub fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = String> + 'a {
    raw_tokens(headers, name).map(str::to_ascii_lowercase)
}

impl ResponseRule {
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        match self {
            ResponseRule::Present(name) => headers.contains_key(name),
            ResponseRule::HasToken(name, token) => {
                raw_tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
            }
        }
    }
}

/// How a flight's response may be shared, decided once when its head arrives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sharing {
    /// The `not_shareable` rule the response matched: only the leader gets it, and the key is
    /// remembered as not shareable for `pass_ttl`.
    pub matched_rule: Option<String>,
    /// A 5xx under `share_errors = false`: only the leader gets it; nothing is remembered,
    /// since the next answer may well be fine.
    pub unshared_error: bool,
    /// The request headers named by the response's `Vary`.
    pub vary: Vec<HeaderName>,
}

impl Sharing {
    pub fn shareable(&self) -> bool {
        self.matched_rule.is_none() && !self.unshared_error
    }
}

/// Judges a response head under a route's policy.
pub fn judge_response(policy: &CoalescePolicy, status: StatusCode, headers: &HeaderMap) -> Sharing {
    Sharing {
        matched_rule: policy
            .not_shareable
            .iter()
            .find(|rule| rule.matches(headers))
            .map(ResponseRule::to_string),
        unshared_error: status.is_server_error() && !policy.share_errors,
        // `HeaderName::from_bytes` lower-cases the name itself.
        vary: raw_tokens(headers, &header::VARY)
            .filter(|t| *t != "*")
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect(),
    }
}

/// Whether a request may join a flight at all. A request with a body may only on a route
/// with `body_max`, and only with a `Content-Length` within it ([`shareable_body_length`]).
pub fn request_may_share(
    policy: &CoalescePolicy,
    parts: &request::Parts,
    body_is_empty: bool,
) -> bool {
    let headers = &parts.headers;
    let declares_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|len| len.as_bytes() != b"0");
    let body_ok = if declares_body || !body_is_empty {
        shareable_body_length(policy, parts).is_some()
    } else {
        true
    };
    let has_credentials =
        headers.contains_key(header::AUTHORIZATION) || headers.contains_key(header::COOKIE);
    policy.enabled
        && policy.methods.contains(&parts.method)
        && body_ok
        && !(policy.credentials == Credentials::Pass && has_credentials)
}

/// The length of a request body the route lets share: a `Content-Length` (no
/// `Transfer-Encoding`) within `body_max`. A chunked body of unknown length passes through.
pub fn shareable_body_length(policy: &CoalescePolicy, parts: &request::Parts) -> Option<u64> {
    let max = policy.body_max?;
    if parts.headers.contains_key(header::TRANSFER_ENCODING) {
        return None;
    }
    let length: u64 = parts
        .headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    (length <= max).then_some(length)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::default_rules;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn default_rules_catch_cookies_private_no_store_and_vary_star() {
        let rules = default_rules();
        let caught = |pairs: &[(&str, &str)]| rules.iter().any(|r| r.matches(&headers(pairs)));
        assert!(caught(&[("set-cookie", "a=1")]));
        assert!(caught(&[("cache-control", "max-age=10, Private")]));
        assert!(caught(&[("cache-control", "private=\"x\"")]));
        assert!(caught(&[
            ("cache-control", "public"),
            ("cache-control", "no-store")
        ]));
        assert!(caught(&[("vary", "accept, *")]));
        assert!(!caught(&[
            ("cache-control", "public, max-age=60"),
            ("vary", "accept-language")
        ]));
        assert!(!caught(&[("cache-control", "no-cache")]));
    }
}
