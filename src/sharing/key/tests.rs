//! The key's unit tests: what goes into a key, and what two keys must (not) share.

use super::*;

fn policy() -> KeyPolicy {
    KeyPolicy {
        route: 7,
        headers: vec![http::header::ACCEPT_ENCODING],
        host: true,
    }
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, HeaderValue::from_static(value));
    }
    map
}

/// The flight key of `method target` for host `t.example` with `pairs`.
fn key(method: &Method, target: &str, pairs: &[(&'static str, &'static str)]) -> Key {
    keyed(method, "t.example", target, pairs)
}

fn keyed(
    method: &Method,
    host: &'static str,
    target: &str,
    pairs: &[(&'static str, &'static str)],
) -> Key {
    let headers = headers(pairs);
    let authority = HeaderValue::from_static(host);
    policy().flight_key(&KeyParts {
        method,
        authority: Some(&authority),
        path_and_query: target,
        headers: &headers,
        trailers: accepts_trailers(&headers),
        body: &[],
        validators: None,
    })
}

#[test]
fn equal_requests_make_equal_keys_with_equal_hashes() {
    let a = key(&Method::GET, "/a?x=1", &[("cookie", "s=1")]);
    let b = key(
        &Method::GET,
        "/a?x=1",
        &[("cookie", "s=1"), ("accept", "*/*")],
    );
    assert_eq!(a, b);
    assert_eq!(random_state().hash_one(&a), random_state().hash_one(&b));
    assert_eq!(a.digest(), b.digest());
    assert_eq!(a.path(), "/a");
    assert_eq!(
        format!("{a:?}"),
        format!("Key(7 GET /a #{:016x})", a.digest())
    );
}

#[test]
fn every_part_of_the_key_tells_requests_apart() {
    let base = key(&Method::GET, "/a", &[]);
    let others = [
        key(&Method::HEAD, "/a", &[]),
        key(&Method::GET, "/a?", &[]),
        key(&Method::GET, "/b", &[]),
        keyed(&Method::GET, "u.example", "/a", &[]),
        key(&Method::GET, "/a", &[("accept-encoding", "br")]),
        key(&Method::GET, "/a", &[("authorization", "Bearer 1")]),
        key(&Method::GET, "/a", &[("cookie", "s=1")]),
        key(&Method::GET, "/a", &[("range", "bytes=0-1")]),
        key(&Method::GET, "/a", &[("if-none-match", "\"1\"")]),
    ];
    for other in &others {
        assert_ne!(&base, other, "{other:?}");
    }
    // Values are length-prefixed: moving bytes between two values makes another key.
    let split = key(&Method::GET, "/a", &[("cookie", "ab"), ("cookie", "c")]);
    let moved = key(&Method::GET, "/a", &[("cookie", "a"), ("cookie", "bc")]);
    assert_ne!(split, moved);
}

#[test]
fn rfc9110_4_2_3_the_host_is_in_every_key_and_compared_without_case() {
    let lower = keyed(&Method::GET, "t.example", "/a", &[]);
    assert_eq!(lower, keyed(&Method::GET, "T.Example", "/a", &[]));
    assert_ne!(lower, keyed(&Method::GET, "evil.example", "/a", &[]));
    let request = |host: &'static str| {
        let authority = HeaderValue::from_static(host);
        policy().cache_key(&KeyParts {
            method: &Method::HEAD,
            authority: Some(&authority),
            path_and_query: "/a",
            headers: &headers(&[("range", "bytes=0-1")]),
            trailers: false,
            body: b"ignored",
            validators: None,
        })
    };
    assert_ne!(request("t.example"), request("evil.example"));
}

#[test]
fn the_cache_key_is_a_plain_get_and_a_revalidation_is_keyed_by_its_validators() {
    let authority = HeaderValue::from_static("t.example");
    let conditional = headers(&[("if-none-match", "\"1\""), ("range", "bytes=0-1")]);
    let parts = |method, headers, validators| KeyParts {
        method,
        authority: Some(&authority),
        path_and_query: "/a",
        headers,
        trailers: accepts_trailers(headers),
        body: &[],
        validators,
    };
    let plain = HeaderMap::new();
    let plain_get = policy().flight_key(&parts(&Method::GET, &plain, None));
    assert_eq!(
        policy().cache_key(&parts(&Method::HEAD, &conditional, None)),
        policy().cache_key(&parts(&Method::GET, &plain, None))
    );
    let validators = headers(&[("if-none-match", "\"1\"")]);
    let revalidation = policy().flight_key(&parts(&Method::GET, &plain, Some(&validators)));
    assert_ne!(revalidation, plain_get);
    // Keyed as the conditional request a client would send with those validators.
    let asked = headers(&[("if-none-match", "\"1\"")]);
    assert_eq!(
        revalidation,
        policy().flight_key(&parts(&Method::GET, &asked, None))
    );
}

#[test]
fn a_variant_differs_from_its_base_and_by_the_varying_values() {
    let base = key(&Method::GET, "/a", &[]);
    let vary = [http::header::ACCEPT_LANGUAGE];
    let en = base.variant(&vary, &headers(&[("accept-language", "en")]));
    let de = base.variant(&vary, &headers(&[("accept-language", "de")]));
    let none = base.variant(&vary, &HeaderMap::new());
    assert!(!base.is_variant());
    assert!(en.is_variant() && none.is_variant());
    assert_ne!(base, none);
    assert_ne!(en, de);
    assert_eq!(
        en,
        base.variant(&vary, &headers(&[("accept-language", "en")]))
    );
    assert_eq!(en.path(), "/a");
}

/// A key writes the conditional and credential fields in one pass when both come from the
/// request's own fields, and in two when the conditions are a revalidation's validators: the
/// bytes must be the same either way, or a revalidation sending exactly the request's own
/// conditions would key apart from the request.
#[test]
fn conditions_given_apart_key_the_same_as_the_requests_own() {
    let own = headers(&[
        ("if-none-match", "\"v1\""),
        ("range", "bytes=0-9"),
        ("authorization", "Bearer a"),
        ("cookie", "s=1"),
    ]);
    let given = own.clone();
    let authority = HeaderValue::from_static("t.example");
    let parts = |validators| KeyParts {
        method: &Method::GET,
        authority: Some(&authority),
        path_and_query: "/c",
        headers: &own,
        trailers: false,
        body: &[],
        validators,
    };
    let one_pass = policy().flight_key(&parts(None));
    let two_passes = policy().flight_key(&parts(Some(&given)));
    assert_eq!(one_pass, two_passes);
    assert_ne!(
        one_pass,
        policy().flight_key(&parts(Some(&HeaderMap::new())))
    );
}
