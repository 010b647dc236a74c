//! The coalescing key: what makes two requests "identical" for sharing one upstream fetch.

use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};

use http::header::{HeaderName, HeaderValue, AUTHORIZATION, COOKIE};
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
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key {
    route: u64,
    method: Method,
    path_and_query: String,
    /// One entry per configured key header, in configuration order, holding all its values.
    varying: Vec<Vec<HeaderValue>>,
    /// Range, If-Range, If-Match, If-None-Match, If-Modified-Since, If-Unmodified-Since.
    conditional: Vec<Vec<HeaderValue>>,
    authorization: Vec<HeaderValue>,
    cookie: Vec<HeaderValue>,
    /// Empty, or the headers a response's `Vary` named with this request's values for them.
    variant: Vec<(HeaderName, Vec<HeaderValue>)>,
}

impl Key {
    pub fn new(route: &Route, method: &Method, path_and_query: &str, headers: &HeaderMap) -> Key {
        let values = |name| -> Vec<HeaderValue> { headers.get_all(name).iter().cloned().collect() };
        Key {
            route: route.id,
            method: method.clone(),
            path_and_query: path_and_query.to_owned(),
            varying: route.coalesce.key_headers.iter().map(values).collect(),
            conditional: RANGE_AND_CONDITIONAL.iter().map(values).collect(),
            authorization: values(&AUTHORIZATION),
            cookie: values(&COOKIE),
            variant: Vec::new(),
        }
    }

    /// This key narrowed to one variant of a response that varies on `vary`.
    pub fn variant(&self, vary: &[HeaderName], headers: &HeaderMap) -> Key {
        let mut key = self.clone();
        key.variant = vary
            .iter()
            .map(|name| {
                (
                    name.clone(),
                    headers.get_all(name).iter().cloned().collect(),
                )
            })
            .collect();
        key
    }

    pub fn is_variant(&self) -> bool {
        !self.variant.is_empty()
    }

    /// The path without the query, which is safe to log.
    pub fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query.as_str(), |(path, _)| path)
    }

    /// A stable 64-bit digest of the whole key, for logs: it tells flights apart without
    /// revealing the query or the credentials.
    pub fn digest(&self) -> u64 {
        // `DefaultHasher::new()` uses fixed keys, so the digest is the same for the same key
        // within one build, which is what correlating log lines needs.
        let mut hasher = DefaultHasher::new();
        self.hash(&mut hasher);
        hasher.finish()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Key({} {} {} #{:016x})",
            self.route,
            self.method,
            self.path(),
            self.digest()
        )
    }
}
