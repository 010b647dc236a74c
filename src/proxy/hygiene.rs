//! Proxy hygiene: the header rewriting every forwarded message gets, in both directions.
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection and must not be forwarded:
//! the fixed list below, plus every header that `Connection` names. Forwarded requests also
//! get `X-Forwarded-For`/`-Proto`/`-Host`, `Via`, and the upstream's `Host`. This module does
//! not decide where a request goes (`routes`) or whether it may share (`proxy`).

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Scheme;
use http::{request, Uri, Version};

use crate::route::Route;

/// The headers that are always hop-by-hop.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes the hop-by-hop headers, including every header named in `Connection`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// The `Via` entry this proxy adds for a message received with `version`.
fn via_entry(version: Version) -> &'static str {
    match version {
        Version::HTTP_10 => "1.0 coalesce-proxy",
        Version::HTTP_2 => "2 coalesce-proxy",
        _ => "1.1 coalesce-proxy",
    }
}

/// Appends `entry` to a comma-separated list header (`Via`, `X-Forwarded-For`), folding any
/// existing values into one.
fn append_to_list(headers: &mut HeaderMap, name: &HeaderName, entry: &str) {
    let mut list: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    list.push(entry);
    if let Ok(value) = HeaderValue::from_str(&list.join(", ")) {
        headers.insert(name.clone(), value);
    }
}

/// Whether a request asks to switch protocols (`Connection: upgrade` with an `Upgrade`).
pub fn is_upgrade(parts: &request::Parts) -> bool {
    parts.headers.contains_key(header::UPGRADE)
        && parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// The host the client asked for: `Host`, or the URI's authority (HTTP/2 `:authority`).
pub fn requested_host(parts: &request::Parts) -> Option<&str> {
    parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
}

/// The URI and headers to send upstream for a client request on `route`. The body is the
/// caller's business.
pub fn upstream_request(
    route: &Route,
    parts: &request::Parts,
    client: SocketAddr,
) -> Result<(Uri, HeaderMap), http::Error> {
    let upstream = &route.upstream.config;
    let mut path_and_query = route.upstream_path(parts.uri.path());
    if let Some(query) = parts.uri.query() {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    let scheme = upstream.origins[0]
        .scheme()
        .cloned()
        .unwrap_or(Scheme::HTTP);
    let mut builder = Uri::builder().scheme(scheme);
    if let Some(authority) = upstream.origins[0].authority() {
        builder = builder.authority(authority.clone());
    }
    let uri = builder.path_and_query(path_and_query).build()?;

    let mut headers = parts.headers.clone();
    remove_hop_by_hop(&mut headers);
    let original_host = requested_host(parts).and_then(|h| HeaderValue::from_str(h).ok());
    headers.remove(header::HOST);
    if let Some(authority) = upstream.origins[0].authority() {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            headers.insert(header::HOST, host);
        }
    }
    append_to_list(&mut headers, &X_FORWARDED_FOR, &client.ip().to_string());
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    if let Some(host) = original_host {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    append_to_list(&mut headers, &header::VIA, via_entry(parts.version));
    Ok((uri, headers))
}

/// Cleans an upstream response head before any client sees it.
pub fn clean_response_headers(headers: &mut HeaderMap, version: Version) {
    remove_hop_by_hop(headers);
    append_to_list(headers, &header::VIA, via_entry(version));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_fixed_and_connection_named_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn lists_are_appended_not_replaced() {
        let mut headers = HeaderMap::new();
        headers.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        headers.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.2"));
        append_to_list(&mut headers, &X_FORWARDED_FOR, "127.0.0.1");
        assert_eq!(headers[&X_FORWARDED_FOR], "10.0.0.1, 10.0.0.2, 127.0.0.1");
    }
}
