//! The coalescing key: what makes two requests "identical" for sharing one upstream fetch.

use std::fmt;
use std::hash::{BuildHasher, DefaultHasher, Hash, Hasher, RandomState};
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use http::header::{HeaderName, AUTHORIZATION, COOKIE};
use http::{HeaderMap, Method};

use crate::coalesce::sharing::RANGE_AND_CONDITIONAL;
use crate::route::Route;

/// Two requests share a flight only when their keys are equal. The key holds the route, the
/// method, the path and query exactly as received, the values of the route's `key_headers`,
/// the Range and conditional headers (so a 206 or 304 only reaches clients that asked for
/// exactly that), and the credentials (Authorization and Cookie), so that two users never
/// share a response made for one of them. A follower released by `Vary` re-joins under a
/// *variant* key that also holds its values for the varying headers.
///
/// The credentials are kept as received, not hashed, so that a hash collision can never
/// hand one user another's response; they never leave the process. `Debug` shows only the
/// route, method, path and [`Key::digest`], never the query or any header value.
///
/// Representation: every part is written, length-prefixed, into one buffer, hashed once
/// with the process's random keys, and shared behind an `Arc`. A request's key is made once
/// and then cloned into the flight table, the fetch and the pass memory; each clone is a
/// reference count, and each table lookup hashes one `u64` and compares one buffer.
#[derive(Clone)]
pub struct Key(Arc<Encoded>);

struct Encoded {
    /// Of `bytes`, with the process's random SipHash keys (so that clients cannot choose keys
    /// that collide in the flight table).
    hash: u64,
    /// Where the path and query lie in `bytes`.
    path_and_query: Range<usize>,
    variant: bool,
    bytes: Box<[u8]>,
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || (self.0.hash == other.0.hash && self.0.bytes == other.0.bytes)
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

/// Writes the parts of a key, each prefixed with its length (or count), so that no two
/// different keys write the same bytes.
struct Writer(Vec<u8>);

impl Writer {
    fn bytes(&mut self, bytes: &[u8]) {
        self.0
            .extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        self.0.extend_from_slice(bytes);
    }

    /// A field's value as `Vary` compares it ([`sharing::vary_value`]), or a marker for none.
    fn normalised(&mut self, headers: &HeaderMap, name: &HeaderName) {
        match crate::coalesce::sharing::vary_value(headers, name) {
            None => self.0.push(0),
            Some(value) => {
                self.0.push(1);
                self.bytes(value.as_bytes());
            }
        }
    }

    fn values(&mut self, headers: &HeaderMap, name: &HeaderName) {
        let values = headers.get_all(name);
        self.0
            .extend_from_slice(&(values.iter().count() as u32).to_le_bytes());
        for value in values {
            self.bytes(value.as_bytes());
        }
    }
}

fn random_state() -> &'static RandomState {
    static STATE: OnceLock<RandomState> = OnceLock::new();
    STATE.get_or_init(RandomState::new)
}

impl Key {
    pub fn new(route: &Route, method: &Method, path_and_query: &str, headers: &HeaderMap) -> Key {
        Key::encode(route, method, path_and_query, headers, true, &[])
    }

    /// As [`Key::new`], for a request whose body is part of what it asks (a read-only POST):
    /// the whole body is in the key, compared byte for byte, never by a hash alone.
    pub fn with_body(
        route: &Route,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Key {
        Key::encode(route, method, path_and_query, headers, true, body)
    }

    /// The key of a plain GET of the resource: as [`Key::new`], without the Range and
    /// conditional headers. What the cache stores responses under.
    pub fn resource(route: &Route, path_and_query: &str, headers: &HeaderMap) -> Key {
        Key::encode(route, &Method::GET, path_and_query, headers, false, &[])
    }

    fn encode(
        route: &Route,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        conditions: bool,
        body: &[u8],
    ) -> Key {
        let mut out = Writer(Vec::with_capacity(64 + path_and_query.len() + body.len()));
        out.0.extend_from_slice(&route.id.to_le_bytes());
        out.bytes(method.as_str().as_bytes());
        let start = out.0.len() + 4;
        out.bytes(path_and_query.as_bytes());
        let path_and_query = start..out.0.len();
        let key_headers = &route.coalesce.key_headers;
        out.0
            .extend_from_slice(&(key_headers.len() as u32).to_le_bytes());
        for name in key_headers {
            // Normalised as `Vary` values are, so that spacing and case in, say,
            // Accept-Encoding do not split flights or stored responses.
            out.normalised(headers, name);
        }
        for name in &RANGE_AND_CONDITIONAL {
            if conditions {
                out.values(headers, name);
            } else {
                out.values(&HeaderMap::new(), name);
            }
        }
        out.values(headers, &AUTHORIZATION);
        out.values(headers, &COOKIE);
        out.bytes(body);
        // Not a variant; a variant replaces this marker with its own part.
        out.0.push(0);
        Key::seal(out.0, path_and_query, false)
    }

    fn seal(bytes: Vec<u8>, path_and_query: Range<usize>, variant: bool) -> Key {
        Key(Arc::new(Encoded {
            hash: random_state().hash_one(&bytes),
            path_and_query,
            variant,
            bytes: bytes.into_boxed_slice(),
        }))
    }

    /// This key narrowed to one variant of a response that varies on `vary`.
    pub fn variant(&self, vary: &[HeaderName], headers: &HeaderMap) -> Key {
        let base = &self.0.bytes[..self.0.bytes.len() - 1];
        let mut out = Writer(base.to_vec());
        out.0.push(1);
        out.0.extend_from_slice(&(vary.len() as u32).to_le_bytes());
        for name in vary {
            out.bytes(name.as_str().as_bytes());
            // Normalised (RFC 9111 §4.1): `gzip,br` and `gzip, br` are one variant.
            out.normalised(headers, name);
        }
        Key::seal(out.0, self.0.path_and_query.clone(), true)
    }

    pub fn is_variant(&self) -> bool {
        self.0.variant
    }

    /// The method, written right after the route's id.
    fn method(&self) -> &str {
        let len = self.0.bytes[8..12].try_into().map_or(0, u32::from_le_bytes) as usize;
        std::str::from_utf8(&self.0.bytes[12..12 + len]).unwrap_or("")
    }

    /// The path and query exactly as received.
    pub fn path_and_query(&self) -> &str {
        // Written from a `&str` in `new`.
        std::str::from_utf8(&self.0.bytes[self.0.path_and_query.clone()]).unwrap_or("")
    }

    /// The path without the query, which is safe to log.
    pub fn path(&self) -> &str {
        let path_and_query = self.path_and_query();
        path_and_query
            .split_once('?')
            .map_or(path_and_query, |(path, _)| path)
    }

    /// A stable 64-bit digest of the whole key, for logs: it tells flights apart without
    /// revealing the query or the credentials.
    pub fn digest(&self) -> u64 {
        // `DefaultHasher::new()` uses fixed keys, so the digest is the same for the same key
        // within one build, which is what correlating log lines needs.
        let mut hasher = DefaultHasher::new();
        self.0.bytes.hash(&mut hasher);
        hasher.finish()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Key({} {} {} #{:016x})",
            u64::from_le_bytes(self.0.bytes[..8].try_into().unwrap_or_default()),
            self.method(),
            self.path(),
            self.digest()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::route::RouteTable;

    fn route() -> Arc<Route> {
        let config = Config::from_toml(
            "[upstreams.a]\nurl = \"http://127.0.0.1:1\"\n[[routes]]\npath_prefix = \"/\"\nupstream = \"a\"\n",
        )
        .expect("valid config");
        let upstream = Arc::new(crate::upstream::Upstream::new(
            config.upstreams["a"].clone(),
        ));
        let table = RouteTable::new(
            &config,
            |_| upstream.clone(),
            &crate::observe::metrics::Metrics::new(),
        );
        table.find(None, "/").cloned().expect("a route")
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, http::HeaderValue::from_static(value));
        }
        map
    }

    fn key(
        route: &Route,
        method: &Method,
        target: &str,
        pairs: &[(&'static str, &'static str)],
    ) -> Key {
        Key::new(route, method, target, &headers(pairs))
    }

    #[test]
    fn equal_requests_make_equal_keys_with_equal_hashes() {
        let route = route();
        let a = key(&route, &Method::GET, "/a?x=1", &[("cookie", "s=1")]);
        let b = key(
            &route,
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
            format!("Key({} GET /a #{:016x})", route.id, a.digest())
        );
    }

    #[test]
    fn every_part_of_the_key_tells_requests_apart() {
        let route = route();
        let base = key(&route, &Method::GET, "/a", &[]);
        let others = [
            key(&route, &Method::HEAD, "/a", &[]),
            key(&route, &Method::GET, "/a?", &[]),
            key(&route, &Method::GET, "/b", &[]),
            key(&route, &Method::GET, "/a", &[("authorization", "Bearer 1")]),
            key(&route, &Method::GET, "/a", &[("cookie", "s=1")]),
            key(&route, &Method::GET, "/a", &[("range", "bytes=0-1")]),
            key(&route, &Method::GET, "/a", &[("if-none-match", "\"1\"")]),
        ];
        for other in &others {
            assert_ne!(&base, other, "{other:?}");
        }
        // Values are length-prefixed: moving bytes between two values makes another key.
        let split = key(
            &route,
            &Method::GET,
            "/a",
            &[("cookie", "ab"), ("cookie", "c")],
        );
        let moved = key(
            &route,
            &Method::GET,
            "/a",
            &[("cookie", "a"), ("cookie", "bc")],
        );
        assert_ne!(split, moved);
    }

    #[test]
    fn a_variant_differs_from_its_base_and_by_the_varying_values() {
        let route = route();
        let base = key(&route, &Method::GET, "/a", &[]);
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
}
