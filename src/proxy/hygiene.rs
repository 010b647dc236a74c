//! Proxy hygiene: the header rewriting every forwarded message gets, in both directions (the
//! upstream-request phase's head, and the cleaning in the response phase).
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection and must not be forwarded:
//! the fixed list below, plus every header that `Connection` names. Forwarded requests also
//! get `X-Forwarded-For`/`-Proto`/`-Host`, `Via`, and the upstream's `Host`. This module does
//! not decide where a request goes (`route`) or whether it may share (`sharing`).

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{request, Uri, Version};

use super::context::RequestContext;
use crate::route::Route;
use crate::sharing;

/// The headers that are always hop-by-hop (RFC 9110 §7.6.1, and RFC 9112's
/// `Transfer-Encoding`). `Trailer` is not among them: it names the trailer fields that end a
/// message, end to end, and hyper sends an HTTP/1.1 client only the trailers it names.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes the hop-by-hop headers, including every header named in `Connection`. One look
/// at each field first: most messages carry none, and removing nine names that are not there
/// costs nine hash lookups.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
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
fn via_entry(version: Version) -> HeaderValue {
    HeaderValue::from_static(match version {
        Version::HTTP_10 => "1.0 coalesce-proxy",
        Version::HTTP_2 => "2 coalesce-proxy",
        _ => "1.1 coalesce-proxy",
    })
}

/// Appends `entry` to a comma-separated list header (`Via`, `X-Forwarded-For`), folding any
/// existing values into one. `entry` is reused as it is when the list is new, which is the
/// usual case and then costs no copy.
fn append_to_list(headers: &mut HeaderMap, name: &HeaderName, entry: HeaderValue) {
    let mut existing = headers.get_all(name).iter().peekable();
    if existing.peek().is_none() {
        headers.insert(name.clone(), entry);
        return;
    }
    let mut list = Vec::new();
    for value in existing.chain(std::iter::once(&entry)) {
        if !list.is_empty() {
            list.extend_from_slice(b", ");
        }
        list.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(list)) {
        headers.insert(name.clone(), value);
    }
}

thread_local! {
    /// The last client address this worker wrote as an `X-Forwarded-For` entry, and the
    /// entry: a sidecar's requests come from a few peers (the application beside it, a load
    /// balancer), so formatting the address for each request (about 1,000 instructions)
    /// mostly repeats the one before.
    static FORWARDED_FOR: std::cell::RefCell<Option<(std::net::IpAddr, HeaderValue)>> =
        const { std::cell::RefCell::new(None) };
}

/// The client's address as an `X-Forwarded-For` entry.
fn forwarded_for(client: SocketAddr) -> Option<HeaderValue> {
    let ip = client.ip();
    FORWARDED_FOR.with_borrow_mut(|last| {
        if let Some((last_ip, entry)) = last {
            if *last_ip == ip {
                return Some(entry.clone());
            }
        }
        let entry = format_address(ip)?;
        *last = Some((ip, entry.clone()));
        Some(entry)
    })
}

fn format_address(ip: std::net::IpAddr) -> Option<HeaderValue> {
    use std::io::Write;
    // Long enough for any IPv6 address; written in place, then copied once.
    let mut text = [0u8; 48];
    let mut cursor = std::io::Cursor::new(&mut text[..]);
    write!(cursor, "{ip}").ok()?;
    let len = cursor.position() as usize;
    HeaderValue::from_bytes(&text[..len]).ok()
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

/// The most fields [`upstream_request`] adds to the client's: `TE`, `Connection`, `Host`,
/// `X-Forwarded-For`, `-Proto`, `-Host`, `Via`.
const ADDED_UPSTREAM: usize = 7;

/// The URI and headers to send upstream for a request. The body is the caller's business.
pub fn upstream_request(request: &RequestContext) -> Result<(Uri, HeaderMap), http::Error> {
    let (route, parts) = (&request.route, &request.parts);
    let upstream = &route.upstream;
    let origin = &upstream.config.origins[0];
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(origin.scheme().cloned().unwrap_or(Scheme::HTTP));
    uri.authority = origin.authority().cloned();
    uri.path_and_query = Some(upstream_path_and_query(route, &parts.uri)?);
    let uri = Uri::from_parts(uri)?;

    // Built with room for the fields added below: a copy of the client's map would have
    // none, and each field added would move its fields to a larger table.
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + ADDED_UPSTREAM);
    for (name, value) in &parts.headers {
        if name != header::HOST {
            headers.append(name.clone(), value.clone());
        }
    }
    remove_hop_by_hop(&mut headers);
    if request.accepts_trailers {
        // `TE: trailers` is what gRPC servers demand, and the one value RFC 9113 §8.2.2
        // allows over HTTP/2; over HTTP/1.1, TE is hop-by-hop, so `Connection` names it.
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        if !upstream.config.http2 {
            headers.insert(header::CONNECTION, HeaderValue::from_static("te"));
        }
    }
    if let Some(host) = upstream.host() {
        headers.insert(header::HOST, host.clone());
    }
    if let Some(entry) = forwarded_for(request.connection.peer) {
        append_to_list(&mut headers, &X_FORWARDED_FOR, entry);
    }
    let proto = if request.connection.tls {
        "https"
    } else {
        "http"
    };
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    // Not where hosts share answers: the origin must not tell them apart by what it is not
    // keyed on.
    match &request.authority {
        Some(authority) if !route.coalesce.share_across_hosts => {
            headers.insert(X_FORWARDED_HOST.clone(), authority.clone());
        }
        _ => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
    append_to_list(&mut headers, &header::VIA, via_entry(parts.version));
    Ok((uri, headers))
}

/// The path and query to send upstream. Without a prefix to strip or a base path, that is
/// the client's own, shared rather than copied.
fn upstream_path_and_query(route: &Route, uri: &Uri) -> Result<PathAndQuery, http::Error> {
    if !route.strip_prefix && route.upstream.config.base_path.is_empty() {
        return Ok(uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")));
    }
    let mut path_and_query = route.upstream_path(uri.path());
    if let Some(query) = uri.query() {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    Ok(PathAndQuery::try_from(path_and_query)?)
}

/// Cleans an upstream response head before any client sees it (no `Via` on a gRPC
/// trailers-only response: [`sharing::grpc_trailers_only`]).
pub fn clean_response_headers(headers: &mut HeaderMap, version: Version) {
    remove_hop_by_hop(headers);
    if !sharing::grpc_trailers_only(headers) {
        append_to_list(headers, &header::VIA, via_entry(version));
    }
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
    fn each_client_address_gets_its_own_forwarded_for_entry_whatever_came_before() {
        let v4: SocketAddr = "127.0.0.2:5000".parse().unwrap();
        let v6: SocketAddr = "[::1]:5000".parse().unwrap();
        for (addr, entry) in [
            (v4, "127.0.0.2"),
            (v4, "127.0.0.2"),
            (v6, "::1"),
            (v4, "127.0.0.2"),
        ] {
            assert_eq!(forwarded_for(addr).unwrap(), entry);
        }
    }

    #[test]
    fn lists_are_appended_not_replaced() {
        let mut headers = HeaderMap::new();
        headers.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        headers.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.2"));
        append_to_list(
            &mut headers,
            &X_FORWARDED_FOR,
            HeaderValue::from_static("127.0.0.1"),
        );
        assert_eq!(headers[&X_FORWARDED_FOR], "10.0.0.1, 10.0.0.2, 127.0.0.1");
    }
}
