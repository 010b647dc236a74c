//! A client's conditional GET or HEAD against a stored response (RFC 9111 §4.3.2, RFC 9110
//! §13): whether the cache answers it with 304 Not Modified instead of the stored 200.
//! `If-Match`, `If-Unmodified-Since` and `If-Range` are not evaluated here: requests with them
//! go upstream.

use std::time::SystemTime;

use http::header::{self, HeaderMap, HeaderName};

/// Whether the request's `If-None-Match` (or, without one, its `If-Modified-Since`) is
/// false for the stored response's fields, so that the answer is 304.
pub fn not_modified(request: &HeaderMap, stored: &HeaderMap) -> bool {
    let mut if_none_match = request.get_all(header::IF_NONE_MATCH).iter().peekable();
    if if_none_match.peek().is_some() {
        // §13.1.2: weak comparison; `*` matches any current representation.
        let Some(etag) = stored.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let etag = opaque(etag);
        return if_none_match
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .any(|tag| tag == "*" || opaque(tag) == etag);
    }
    // §13.1.3: only with a Last-Modified to compare, and only a valid date counts.
    let date = |headers: &HeaderMap, name| -> Option<SystemTime> {
        httpdate::parse_http_date(headers.get(name)?.to_str().ok()?).ok()
    };
    match (
        date(request, header::IF_MODIFIED_SINCE),
        date(stored, header::LAST_MODIFIED),
    ) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// An entity tag without its weakness prefix, for the weak comparison.
fn opaque(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

/// The 304 to send for a stored response with `headers` (RFC 9110 §15.4.5): the same fields
/// without those that describe a body.
pub fn not_modified_headers(headers: &HeaderMap) -> HeaderMap {
    let mut headers = headers.clone();
    for name in [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::CONTENT_RANGE,
    ] {
        headers.remove(name);
    }
    headers
}

/// Stored header fields updated by a newer response's (RFC 9111 §3.2): each field the new
/// response has replaces every line of the stored one; the others are kept. The framing fields
/// (`Content-Length`, `Transfer-Encoding`) describe the stored body and are never taken from a
/// 304 or from a part.
pub(super) fn updated_fields(stored: &HeaderMap, new: &HeaderMap) -> HeaderMap {
    let replaced =
        |name: &HeaderName| name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING;
    let mut headers = stored.clone();
    for name in new.keys().filter(|n| replaced(n)) {
        headers.remove(name);
    }
    for (name, value) in new.iter().filter(|(n, _)| replaced(n)) {
        headers.append(name.clone(), value.clone());
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn rfc9110_13_1_2_if_none_match_uses_the_weak_comparison() {
        let stored = map(&[
            ("etag", "W/\"v1\""),
            ("last-modified", "Wed, 25 Nov 2026 10:00:00 GMT"),
        ]);
        assert!(not_modified(&map(&[("if-none-match", "\"v1\"")]), &stored));
        assert!(not_modified(
            &map(&[("if-none-match", "\"x\", W/\"v1\"")]),
            &stored
        ));
        assert!(not_modified(&map(&[("if-none-match", "*")]), &stored));
        assert!(!not_modified(&map(&[("if-none-match", "\"v2\"")]), &stored));
        // If-None-Match decides alone, even when If-Modified-Since would say 304.
        let both = map(&[
            ("if-none-match", "\"v2\""),
            ("if-modified-since", "Thu, 26 Nov 2026 10:00:00 GMT"),
        ]);
        assert!(!not_modified(&both, &stored));
        assert!(!not_modified(
            &map(&[("if-none-match", "\"v1\"")]),
            &map(&[])
        ));
    }

    #[test]
    fn rfc9110_13_1_3_if_modified_since_compares_last_modified() {
        let stored = map(&[("last-modified", "Wed, 25 Nov 2026 10:00:00 GMT")]);
        let since = |date: &'static str| map(&[("if-modified-since", date)]);
        assert!(not_modified(
            &since("Wed, 25 Nov 2026 10:00:00 GMT"),
            &stored
        ));
        assert!(not_modified(
            &since("Thu, 26 Nov 2026 10:00:00 GMT"),
            &stored
        ));
        assert!(!not_modified(
            &since("Tue, 24 Nov 2026 10:00:00 GMT"),
            &stored
        ));
        assert!(!not_modified(&since("yesterday"), &stored));
        assert!(!not_modified(
            &since("Thu, 26 Nov 2026 10:00:00 GMT"),
            &map(&[])
        ));
    }
}
