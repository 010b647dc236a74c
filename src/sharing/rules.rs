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

    /// The field the rule is about.
    fn field(&self) -> &HeaderName {
        match self {
            ResponseRule::Present(name) | ResponseRule::HasToken(name, _) => name,
        }
    }
}

/// The first of `rules` (in their order) that `headers` match. One pass over the response's
/// fields finds the rules whose field is there, and only those look further: a look-up per
/// rule hashed each field name, for every response.
fn first_match<'r>(rules: &'r [ResponseRule], headers: &HeaderMap) -> Option<&'r ResponseRule> {
    let mut first: Option<usize> = None;
    for name in headers.keys() {
        let candidates = rules.iter().enumerate().take(first.unwrap_or(rules.len()));
        for (index, rule) in candidates {
            if rule.field() == name && rule.matches(headers) {
                first = Some(index);
                break;
            }
        }
    }
    first.map(|index| &rules[index])
}

/// How a flight's response may be shared, decided once when its head arrives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sharing {
    /// The `not_shareable` rule the response matched: only the leader gets it, and the key is
    /// remembered as not shareable for `pass_ttl`.
    pub matched_rule: Option<String>,
    /// A 5xx (or a gRPC error status in the head: a trailers-only response) under
    /// `share_errors = false`: only the leader gets it; nothing is remembered, since the next
    /// answer may well be fine.
    pub unshared_error: bool,
    /// A gRPC response under `share_errors = false`: its status comes in its trailers, so a
    /// follower takes it only once they show no error (or once the flight can no longer
    /// keep the whole body for it).
    pub status_in_trailers: bool,
    /// The request headers named by the response's `Vary`.
    pub vary: Vec<HeaderName>,
}

impl Sharing {
    pub fn shareable(&self) -> bool {
        self.matched_rule.is_none() && !self.unshared_error
    }
}

/// Whether a response is gRPC's (`application/grpc`, `application/grpc+proto`, ...).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"))
}

/// Whether a head or trailer section carries a gRPC error: a `grpc-status` other than 0.
pub fn grpc_error(fields: &HeaderMap) -> bool {
    fields
        .get("grpc-status")
        .is_some_and(|status| status.as_bytes() != b"0")
}

/// Whether a response head is a gRPC trailers-only response (its status already in the
/// head: an error before any message). gRPC clients take every field of such a head as the
/// call's trailing metadata, so the proxy adds none of its own to it (`Via`, `Date`, the
/// outcome header, `Cache-Status`): the metadata arrives as the server sent it.
pub fn grpc_trailers_only(headers: &HeaderMap) -> bool {
    is_grpc(headers) && headers.contains_key("grpc-status")
}

/// Judges a response head under a route's policy.
pub fn judge_response(policy: &CoalescePolicy, status: StatusCode, headers: &HeaderMap) -> Sharing {
    // A gRPC error is an error whatever its HTTP status (200); its status is in the head only
    // for a trailers-only response, and otherwise comes in the trailers.
    let grpc = !policy.share_errors && is_grpc(headers);
    let grpc_failed = grpc && grpc_error(headers);
    Sharing {
        matched_rule: first_match(&policy.not_shareable, headers).map(ResponseRule::to_string),
        unshared_error: (status.is_server_error() && !policy.share_errors) || grpc_failed,
        status_in_trailers: grpc && !grpc_failed,
        // `HeaderName::from_bytes` lower-cases the name itself.
        vary: raw_tokens(headers, &header::VARY)
            .filter(|t| *t != "*")
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect(),
    }
}

/// Whether a request may join a flight at all. A request with a body may only on a route
/// with `body_max`, and only if its body may be within it ([`shareable_body_length`]).
pub fn request_may_share(
    policy: &CoalescePolicy,
    parts: &request::Parts,
    body_is_empty: bool,
) -> bool {
    if !policy.enabled || !policy.methods.contains(&parts.method) {
        return false;
    }
    // One pass over the request's few fields (most are standard names, which compare by
    // their kind alone) rather than a hashed look-up per field asked about.
    let listed = &policy.pass_if_present;
    let (mut declares_body, mut has_credentials) = (false, false);
    for (name, value) in &parts.headers {
        if name == header::TRANSFER_ENCODING {
            declares_body = true;
        } else if name == header::CONTENT_LENGTH {
            declares_body |= value.as_bytes() != b"0";
        } else if name == header::AUTHORIZATION || name == header::COOKIE {
            has_credentials = true;
        }
        // One of the route's `pass_if_present` headers: not in the key, so never shared.
        if listed.contains(name) {
            return false;
        }
    }
    let body_ok = if declares_body || !body_is_empty {
        shareable_body_length(policy, parts).is_some()
    } else {
        true
    };
    body_ok && !(policy.credentials == Credentials::Pass && has_credentials)
}

/// The most request body bytes to read for sharing a request on a route with `body_max`: its
/// `Content-Length` when that is within `body_max`; `body_max` itself when the length is not
/// declared (chunked, or HTTP/2 without `content-length`, as every gRPC client sends), in
/// which case the body is read up to it and still passes through if it turns out longer.
pub fn shareable_body_length(policy: &CoalescePolicy, parts: &request::Parts) -> Option<u64> {
    let max = policy.body_max?;
    if parts.headers.contains_key(header::TRANSFER_ENCODING) {
        return Some(max);
    }
    let Some(length) = parts.headers.get(header::CONTENT_LENGTH) else {
        return Some(max);
    };
    let length: u64 = length.to_str().ok()?.parse().ok()?;
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

    #[test]
    fn the_rule_reported_is_the_first_in_the_routes_order_whatever_the_fields_order() {
        let rules = default_rules();
        let first = |pairs: &[(&str, &str)]| first_match(&rules, &headers(pairs)).cloned();
        let expected = rules
            .iter()
            .find(|r| r.to_string() == "set-cookie")
            .cloned();
        // Set-Cookie comes first among the default rules; the response names it last.
        let both = [("cache-control", "no-store"), ("set-cookie", "a=1")];
        assert_eq!(first(&both), expected);
        for rule in &rules {
            let one = match rule {
                ResponseRule::Present(name) => vec![(name.as_str(), "x")],
                ResponseRule::HasToken(name, token) => vec![(name.as_str(), token.as_str())],
            };
            assert_eq!(first(&one).as_ref(), Some(rule), "{rule}");
        }
        assert_eq!(
            first(&[("cache-control", "public"), ("vary", "accept")]),
            None
        );
    }
}
