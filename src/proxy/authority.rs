//! Which authority a request names: the one it is routed by, keyed under and forwarded in
//! `X-Forwarded-Host`. HTTP/1.1 puts it in exactly one `Host` line, unless the target is in
//! absolute form, whose authority then wins (RFC 9112 §3.2, §3.2.2); HTTP/2 puts it in
//! `:authority`, and a `host` beside it must name the same (RFC 9113 §8.3.1). A request that
//! breaks these is refused (400) before it is routed: two parts of the proxy, or the proxy and
//! the origin, must never read two different hosts from one request.

use http::header::{self, HeaderValue};
use http::{request, Version};

/// Why a request's authority was refused: the message of its 400.
pub type Malformed = &'static str;

/// The authority `parts` names, if any (an HTTP/1.0 request may name none).
pub fn requested_authority(parts: &request::Parts) -> Result<Option<HeaderValue>, Malformed> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header\n");
    }
    if let Some(host) = host {
        if !is_host(host.as_bytes()) {
            return Err("invalid Host header\n");
        }
    }
    let target = parts.uri.authority();
    if target.is_some_and(|target| target.as_str().contains('@')) {
        return Err("user information in the request target\n");
    }
    let target = target.map(|t| HeaderValue::from_str(t.as_str()));
    let target = match target {
        Some(Ok(value)) => Some(value),
        Some(Err(_)) => return Err("invalid authority in the request target\n"),
        None => None,
    };
    if parts.version >= Version::HTTP_2 {
        return match (target, host) {
            (Some(authority), Some(host))
                if !authority.as_bytes().eq_ignore_ascii_case(host.as_bytes()) =>
            {
                Err(":authority and host name different hosts\n")
            }
            (Some(authority), _) => Ok(Some(authority)),
            (None, host) => Ok(host.cloned()),
        };
    }
    if host.is_none() && parts.version == Version::HTTP_11 {
        return Err("no Host header\n");
    }
    Ok(target.or_else(|| host.cloned()))
}

/// Whether a `Host` value is a host with an optional port (`uri-host [ ":" port ]`, RFC
/// 3986 §3.2.2): a registered name's characters (unreserved, sub-delims, percent-encoding)
/// and an IP literal's brackets and colons; no user information, no path, no space. A byte
/// check rather than a parse: it runs on every request, and `http`'s parser copies the value.
fn is_host(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&byte| byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%:[]".contains(&byte))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(version: Version, target: &str, hosts: &[&str]) -> request::Parts {
        let mut request = http::Request::get(target).version(version);
        for host in hosts {
            request = request.header(header::HOST, *host);
        }
        request.body(()).expect("request").into_parts().0
    }

    fn authority(
        version: Version,
        target: &str,
        hosts: &[&str],
    ) -> Result<Option<String>, Malformed> {
        requested_authority(&parts(version, target, hosts))
            .map(|a| a.map(|a| a.to_str().expect("text").to_owned()))
    }

    #[test]
    fn rfc9112_3_2_an_http11_request_names_exactly_one_host() {
        let one = authority(Version::HTTP_11, "/x", &["t.example"]);
        assert_eq!(one, Ok(Some("t.example".into())));
        assert!(authority(Version::HTTP_11, "/x", &[]).is_err());
        assert!(authority(Version::HTTP_11, "/x", &["t.example", "t.example"]).is_err());
        assert!(authority(Version::HTTP_10, "/x", &["a.example", "b.example"]).is_err());
        assert!(authority(Version::HTTP_11, "/x", &["user@t.example"]).is_err());
        assert!(authority(Version::HTTP_11, "/x", &["t.example/x"]).is_err());
        // HTTP/1.0 had no Host.
        assert_eq!(authority(Version::HTTP_10, "/x", &[]), Ok(None));
    }

    #[test]
    fn rfc9112_3_2_2_an_absolute_form_targets_authority_wins_over_host() {
        let target = "http://secret.local:8080/x";
        let routed = authority(Version::HTTP_11, target, &["t.example"]);
        assert_eq!(routed, Ok(Some("secret.local:8080".into())));
        // Still an HTTP/1.1 request: it must carry Host (RFC 9112 §3.2).
        assert!(authority(Version::HTTP_11, target, &[]).is_err());
        assert!(authority(Version::HTTP_11, "http://u@s.local/x", &["s.local"]).is_err());
    }

    #[test]
    fn rfc9113_8_3_1_authority_and_host_must_agree() {
        let target = "https://t.example/x";
        let same = authority(Version::HTTP_2, target, &["T.Example"]);
        assert_eq!(same, Ok(Some("t.example".into())));
        assert!(authority(Version::HTTP_2, target, &["evil.example"]).is_err());
        let alone = authority(Version::HTTP_2, target, &[]);
        assert_eq!(alone, Ok(Some("t.example".into())));
        let host_only = authority(Version::HTTP_2, "/x", &["t.example"]);
        assert_eq!(host_only, Ok(Some("t.example".into())));
    }
}
