//! The key: what makes two requests "identical", for sharing one upstream fetch and for
//! finding a stored response. [`KeyPolicy`] is the one place keys are derived, so the flight
//! table and the cache can never disagree about who may share what.

use std::fmt;
use std::hash::{BuildHasher, DefaultHasher, Hash, Hasher, RandomState};
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use http::header::{HeaderName, AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderValue, Method};

use super::rules::RANGE_AND_CONDITIONAL;

/// What a route puts into the keys of its requests. Made once per route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPolicy {
    /// The route's id, unique in the process (never reused, even across reloads), so that two
    /// routes never share a key, and a request routed by a new route table never joins a
    /// flight an old one started.
    pub route: u64,
    /// Request headers whose values are part of the key (`key_headers`).
    pub headers: Vec<HeaderName>,
    /// The authority is part of the key: false only on a route that says
    /// `share_across_hosts = true`.
    pub host: bool,
}

/// The credentials a key holds as received, in this order.
static CREDENTIALS: [HeaderName; 2] = [AUTHORIZATION, COOKIE];

/// [`RANGE_AND_CONDITIONAL`] then [`CREDENTIALS`]: what a key writes the values of, in the
/// order it writes them, when both come from the request's own fields.
fn conditions_and_credentials() -> &'static [HeaderName] {
    static BOTH: OnceLock<Vec<HeaderName>> = OnceLock::new();
    BOTH.get_or_init(|| {
        RANGE_AND_CONDITIONAL
            .iter()
            .chain(&CREDENTIALS)
            .cloned()
            .collect()
    })
}

/// The parts of a request its keys are made from.
#[derive(Debug, Clone, Copy)]
pub struct KeyParts<'a> {
    pub method: &'a Method,
    /// The authority the request was routed by (`Host`, `:authority`, or the absolute-form
    /// target's): an origin may answer each host differently, and it sees the host.
    pub authority: Option<&'a HeaderValue>,
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    /// Its `TE` accepts trailers ([`accepts_trailers`]).
    pub trailers: bool,
    /// A shared POST's body, read whole; empty otherwise.
    pub body: &'a [u8],
    /// The conditional headers a revalidation sends instead of the request's own (a stored
    /// response's validators), or `None` for the request's own.
    pub validators: Option<&'a HeaderMap>,
}

impl KeyPolicy {
    /// The key of a request's flight: everything of the request that reaches the upstream and
    /// may change its answer. A revalidation is keyed with the validators it sends, as a
    /// conditional request would be: only clients that found the same stored response share
    /// its flight, so its 304 means something to every one of them.
    pub fn flight_key(&self, request: &KeyParts<'_>) -> Key {
        let conditions = request.validators.unwrap_or(request.headers);
        self.encode(
            request,
            request.method,
            Some(conditions),
            request.trailers,
            request.body,
        )
    }

    /// The key a request's stored response is found under: a plain GET of the same resource
    /// (no Range, no conditions, no body), so that HEAD and conditional GETs are answered
    /// from a stored GET.
    pub fn cache_key(&self, request: &KeyParts<'_>) -> Key {
        self.encode(request, &Method::GET, None, false, &[])
    }

    fn encode(
        &self,
        request: &KeyParts<'_>,
        method: &Method,
        conditions: Option<&HeaderMap>,
        trailers: bool,
        body: &[u8],
    ) -> Key {
        let path_and_query = request.path_and_query;
        let mut out = Writer(Vec::with_capacity(96 + path_and_query.len() + body.len()));
        out.0.extend_from_slice(&self.route.to_le_bytes());
        out.bytes(method.as_str().as_bytes());
        let start = out.0.len() + 4;
        out.bytes(path_and_query.as_bytes());
        let path_and_query = start..out.0.len();
        // Host names are case-insensitive (RFC 9110 §4.2.3): one key for every spelling.
        let authority = request.authority.filter(|_| self.host);
        out.lowercase(authority.map_or(&[][..], HeaderValue::as_bytes));
        out.0
            .extend_from_slice(&(self.headers.len() as u32).to_le_bytes());
        for name in &self.headers {
            // Normalised as `Vary` values are, so that spacing and case in, say,
            // Accept-Encoding do not split flights or stored responses.
            out.normalised(request.headers, name);
        }
        match conditions {
            // The request's own conditions (most keys): one pass over its fields finds those
            // and the credentials both.
            Some(conditions) if std::ptr::eq(conditions, request.headers) => {
                out.values_of(request.headers, conditions_and_credentials());
            }
            _ => {
                // An empty map allocates nothing, and `values_of` finds nothing in it.
                let none = HeaderMap::new();
                out.values_of(conditions.unwrap_or(&none), &RANGE_AND_CONDITIONAL);
                out.values_of(request.headers, &CREDENTIALS);
            }
        }
        out.bytes(body);
        // `TE: trailers` reaches the upstream, and a gRPC server refuses a call without it.
        out.0.push(u8::from(trailers));
        // Not a variant; a variant replaces this marker with its own part.
        out.0.push(0);
        Key::seal(out.0, path_and_query, false)
    }
}

/// Whether a request's `TE` accepts trailers (the `trailers` token; RFC 9110 §10.1.4). It
/// is forwarded (the one `TE` value HTTP/2 allows, RFC 9113 §8.2.2), so it is in flight keys.
pub fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let token = t.split(';').next().unwrap_or("");
            token.trim().eq_ignore_ascii_case("trailers")
        })
}

/// Two requests share a flight only when their keys are equal. The key holds the route, the
/// method, the path and query exactly as received, the authority (lower-cased), the values of
/// the route's `key_headers`,
/// the Range and conditional headers (so a 206 or 304 only reaches clients that asked for
/// exactly that), whether `TE` accepts trailers, and the credentials (Authorization and Cookie), so that two users never
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
    /// A `Vec`, not a boxed slice: shrinking it to fit would copy it once more.
    bytes: Vec<u8>,
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

/// A `BuildHasher` for maps keyed by [`Key`]: the key already carries its hash (keyed SipHash
/// of its bytes), so the map takes it as it is rather than hashing a hash.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyHash;

impl BuildHasher for KeyHash {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

/// The hasher of [`KeyHash`]: passes a key's `u64` through.
#[derive(Debug, Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only keys use this hasher, and they write one u64; anything else is still hashed.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
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

    /// A field's value as `Vary` compares it ([`super::vary_value`]), or a marker for none.
    fn lowercase(&mut self, bytes: &[u8]) {
        self.0
            .extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        self.0.extend(bytes.iter().map(u8::to_ascii_lowercase));
    }

    fn normalised(&mut self, headers: &HeaderMap, name: &HeaderName) {
        match super::vary::vary_value(headers, name) {
            None => self.0.push(0),
            Some(value) => {
                self.0.push(1);
                self.bytes(value.as_bytes());
            }
        }
    }

    /// What [`Writer::values`] writes for each of `names` in turn. Most requests carry none
    /// of them, so one pass over the request's few fields finds which are there, and only
    /// those are looked up (a look-up per name hashed each, a few hundred instructions per
    /// key).
    fn values_of(&mut self, headers: &HeaderMap, names: &[HeaderName]) {
        debug_assert!(names.len() <= 32);
        let mut present = 0u32;
        for name in headers.keys() {
            if let Some(index) = names.iter().position(|n| n == name) {
                present |= 1 << index;
            }
        }
        for (index, name) in names.iter().enumerate() {
            if present & (1 << index) == 0 {
                self.0.extend_from_slice(&0u32.to_le_bytes());
            } else {
                self.values(headers, name);
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
    fn seal(bytes: Vec<u8>, path_and_query: Range<usize>, variant: bool) -> Key {
        Key(Arc::new(Encoded {
            hash: random_state().hash_one(&bytes),
            path_and_query,
            variant,
            bytes,
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

    /// The key's hash under the process's random keys, computed once: what the flight table
    /// shards by.
    pub fn hash64(&self) -> u64 {
        self.0.hash
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

    /// The key without its route's id (which only this process knows): what names the same
    /// request in every proxy of a fleet, given the route's name there (`fleet`). It holds
    /// the credentials as the key does, so it must not leave the process for a request that
    /// has any.
    pub fn portable(&self) -> &[u8] {
        &self.0.bytes[8..]
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
mod tests;
