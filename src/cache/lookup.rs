//! The cache's part in a request: what a lookup means for it (serve fresh, serve stale while
//! it is refreshed, or go on to a flight), and what a flight's head then means for a request
//! that missed (a stale response stands in for a failure; a 304 confirms a stored response).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{request, Method, Response, StatusCode};

use super::conditional;
use super::range::{byte_range, RangeAnswer};
use super::status::Forward;
use super::store::{Found, ResponseCache};
use super::stored::StoredResponse;
use crate::config::CachePolicy;
use crate::sharing::{Key, RANGE_AND_CONDITIONAL};

/// What the cache means for one request.
pub enum Lookup {
    /// Serve this stored response now (outcome `hit`).
    Fresh(Arc<StoredResponse>),
    /// Serve it now (outcome `stale`) and have it refreshed in the background: the refresh is
    /// the flight [`Miss::refreshing`] describes, so a request that misses meanwhile joins it.
    Stale(Arc<StoredResponse>),
    /// Go on to a flight.
    Miss(Miss),
}

/// What a flight's head means for a request that missed, when the cache answers instead.
pub enum Settled {
    /// The upstream failed (no head, or a 5xx): this stale response stands in for it.
    StandsIn(Arc<StoredResponse>),
    /// A 304 confirmed the stored response being revalidated; this is it, renewed.
    Confirmed(Arc<StoredResponse>),
}

/// What a request that missed still takes from the cache to its flight.
pub struct Miss {
    /// Why it missed, for `Cache-Status`.
    pub reason: Forward,
    /// A stale response that may stand in if the upstream fails (stale-if-error).
    fallback: Option<Arc<StoredResponse>>,
    /// A `no-cache` response to revalidate: the flight asks with its validators, and a 304
    /// means clients get it.
    revalidating: Option<Arc<StoredResponse>>,
}

/// Looks `parts` up in a route's cache, if it has one, under `key()` (the request's cache key,
/// made only when there is a cache to look in). HEAD is answered from a stored GET.
pub fn look_up(
    cache: Option<&ResponseCache>,
    key: impl FnOnce() -> Key,
    parts: &request::Parts,
) -> Lookup {
    let Some(cache) = cache else {
        return Lookup::Miss(Miss::because(Forward::Bypass));
    };
    // Only GET and HEAD are answered from stored GETs (a shared POST, say, never is).
    if parts.method != Method::GET && parts.method != Method::HEAD {
        return Lookup::Miss(Miss::because(Forward::Method));
    }
    if !may_look_up(parts) {
        return Lookup::Miss(Miss::because(Forward::Request));
    }
    let key = key();
    let found = cache.lookup(&key, &parts.headers);
    if !cacheable_request(parts) {
        // A conditional request (§4.3.2) is answered from a fresh or servable stale entry;
        // otherwise it goes upstream as it is, in a flight keyed by its conditions.
        return match found {
            Some(Found::Fresh(entry)) => Lookup::Fresh(entry),
            Some(Found::Stale(entry)) => Lookup::Stale(entry),
            _ => Lookup::Miss(Miss::because(Forward::Request)),
        };
    }
    match found {
        Some(Found::Fresh(entry)) => Lookup::Fresh(entry),
        Some(Found::Stale(entry)) => Lookup::Stale(entry),
        Some(Found::Expired(entry)) => Lookup::Miss(Miss::refreshing(&entry)),
        Some(Found::Revalidate(entry)) => Lookup::Miss(Miss {
            reason: Forward::Stale,
            fallback: None,
            revalidating: Some(entry),
        }),
        None if cache.varies_on(&key) => Lookup::Miss(Miss::because(Forward::VaryMiss)),
        None => Lookup::Miss(Miss::because(Forward::UriMiss)),
    }
}

impl Miss {
    fn because(reason: Forward) -> Miss {
        Miss {
            reason,
            fallback: None,
            revalidating: None,
        }
    }

    /// What a request that finds `stale` past its freshness (or a background refresh of it)
    /// takes to its flight (RFC 9111 §4.3.1): a stale response with validators is revalidated,
    /// not fetched again, and a 304 renews it; it may stand in for an upstream failure as it
    /// allows.
    pub fn refreshing(stale: &Arc<StoredResponse>) -> Miss {
        Miss {
            reason: Forward::Stale,
            revalidating: stale.has_validators().then(|| stale.clone()),
            fallback: Some(stale.clone()),
        }
    }

    /// The conditional headers the flight asks with: the stored response's validators when it
    /// is being revalidated, else none.
    pub fn validators(&self) -> Option<HeaderMap> {
        self.revalidating.as_ref().map(|entry| entry.validators())
    }

    /// The stored response being revalidated, for the flight to renew on a 304.
    pub fn revalidating(&self) -> Option<Arc<StoredResponse>> {
        self.revalidating.clone()
    }

    /// The stale response that may stand in for an upstream failure now, if any:
    /// `unreachable` when the upstream gave no response at all.
    pub fn stand_in(&self, unreachable: bool) -> Option<&Arc<StoredResponse>> {
        self.fallback
            .as_ref()
            .filter(|entry| entry.may_serve_on_error(Instant::now(), unreachable))
    }

    /// What the flight's head means for this request: `head` is its status and fields, or
    /// `None` when the fetch failed before one. A failure or a 5xx is answered by a stale
    /// stand-in when one may serve; a 304 to a revalidation by the stored response, renewed by
    /// the 304's fields (§4.3.4) so that clients see the new values (the fetch stores the
    /// same renewal). Anything else is the flight's to answer (`None`).
    pub fn settle(
        &self,
        head: Option<(StatusCode, &HeaderMap)>,
        policy: Option<&CachePolicy>,
        request_has_authorization: bool,
    ) -> Option<Settled> {
        let failed = head.is_none_or(|(status, _)| status.is_server_error());
        if failed {
            let stand_in = self.stand_in(head.is_none());
            return stand_in.cloned().map(Settled::StandsIn);
        }
        let (status, fields) = head?;
        let entry = self.revalidating.as_ref()?;
        if status != StatusCode::NOT_MODIFIED {
            return None;
        }
        let renewed =
            policy.and_then(|policy| entry.renewed(fields, policy, request_has_authorization));
        // A 304 that makes the response unstorable still confirms this one use of it.
        Some(Settled::Confirmed(
            renewed.map_or_else(|| entry.clone(), Arc::new),
        ))
    }
}

/// Whether a request asks for the plain resource, so that a response to it may be stored:
/// no Range and no conditional headers (those go through flights keyed by their values).
pub fn cacheable_request(parts: &request::Parts) -> bool {
    !RANGE_AND_CONDITIONAL
        .iter()
        .any(|name| parts.headers.contains_key(name))
}

/// Whether the cache may answer a request: a plain one, or one that asks only for a byte
/// range or with `If-None-Match` / `If-Modified-Since`, which it works out itself (RFC 9111
/// §4.3.2, RFC 9110 §14).
fn may_look_up(parts: &request::Parts) -> bool {
    let answered_here = [
        header::RANGE,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
    ];
    RANGE_AND_CONDITIONAL
        .iter()
        .filter(|name| !answered_here.contains(name))
        .all(|name| !parts.headers.contains_key(name))
}

/// A stored response as the answer to a request, with its current `Age`: HEAD gets the head
/// only, and a conditional request whose condition fails a 304 (RFC 9111 §4.3.2).
pub fn response(entry: &StoredResponse, method: &Method, request: &HeaderMap) -> Response<Bytes> {
    let not_modified =
        entry.status == StatusCode::OK && conditional::not_modified(request, &entry.headers);
    let body = if not_modified {
        Bytes::new()
    } else {
        entry.body.clone()
    };
    let mut response = Response::new(body);
    if not_modified {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        *response.headers_mut() = conditional::not_modified_headers(&entry.headers);
    } else {
        *response.status_mut() = entry.status;
        *response.headers_mut() = entry.headers.clone();
        if entry.status == StatusCode::OK {
            if let Some(range) = request.get(header::RANGE).and_then(|v| v.to_str().ok()) {
                answer_range(&mut response, range);
            }
        }
    }
    if method == Method::HEAD {
        *response.body_mut() = Bytes::new();
    }
    response
        .headers_mut()
        .insert(header::AGE, entry.age_header(Instant::now()));
    response
}

/// Turns a stored 200 into the answer to a `Range` request: 206 with the slice, or 416.
fn answer_range(response: &mut Response<Bytes>, range: &str) {
    let len = response.body().len();
    let (status, content_range, body) = match byte_range(range, len) {
        RangeAnswer::Whole => return,
        RangeAnswer::Part(part) => (
            StatusCode::PARTIAL_CONTENT,
            format!("bytes {}-{}/{len}", part.start, part.end - 1),
            response.body().slice(part),
        ),
        RangeAnswer::Unsatisfiable => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!("bytes */{len}"),
            Bytes::new(),
        ),
    };
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if let Ok(value) = http::HeaderValue::try_from(content_range) {
        headers.insert(header::CONTENT_RANGE, value);
    }
    headers.insert(header::CONTENT_LENGTH, http::HeaderValue::from(body.len()));
    *response.body_mut() = body;
}
