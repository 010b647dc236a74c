//! Invalidation after an unsafe request (RFC 9111 §4.4): a POST, PUT, DELETE, PATCH or any
//! method not known to be safe that got a non-error answer may have changed the resource, so
//! the stored responses for its target URI, and for the URIs its `Location` and
//! `Content-Location` name on the same host, are invalidated.

use http::header::{self, HeaderMap};
use http::{request, StatusCode, Uri};

use super::store::ResponseCache;

/// Invalidates what a response with `status` and `headers` to the request `parts` changed.
/// `cache_for(host, path)` finds the cache of the route a URI belongs to, if it has one.
pub fn after_unsafe_request<'a>(
    cache_for: impl Fn(Option<&str>, &str) -> Option<&'a ResponseCache>,
    parts: &request::Parts,
    status: StatusCode,
    headers: &HeaderMap,
) {
    if parts.method.is_safe() || !(status.is_success() || status.is_redirection()) {
        return;
    }
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()));
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let named = [header::LOCATION, header::CONTENT_LOCATION]
        .into_iter()
        .filter_map(|name| headers.get(name)?.to_str().ok())
        .filter_map(|value| same_host_target(value, host));
    for path_and_query in std::iter::once(target.to_owned()).chain(named) {
        let path = path_and_query.split('?').next().unwrap_or("/");
        if let Some(cache) = cache_for(host, path) {
            cache.invalidate(&path_and_query);
        }
    }
}

/// The path and query of a `Location`/`Content-Location` value, if it is on `host` (§4.4:
/// only URIs that share the origin are invalidated): an absolute path, or an absolute URI
/// whose authority is the request's host.
fn same_host_target(value: &str, host: Option<&str>) -> Option<String> {
    let uri: Uri = value.parse().ok()?;
    match uri.authority() {
        None if value.starts_with('/') && !value.starts_with("//") => Some(value.to_owned()),
        Some(authority) if Some(authority.as_str()) == host => Some(
            uri.path_and_query()
                .map_or("/", |pq| pq.as_str())
                .to_owned(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9111_4_4_only_same_host_locations_are_invalidated() {
        let host = Some("shop.test");
        assert_eq!(same_host_target("/a?b=1", host).as_deref(), Some("/a?b=1"));
        assert_eq!(
            same_host_target("http://shop.test/a", host).as_deref(),
            Some("/a")
        );
        assert_eq!(same_host_target("http://evil.test/a", host), None);
        assert_eq!(same_host_target("relative", host), None);
        assert_eq!(same_host_target("//shop.test/a", host), None);
    }
}
