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
    /// A stored part of the representation (a 206) that this range request completes or
    /// revalidates: its range goes upstream as asked, and a 206 for it is combined with the
    /// stored part (RFC 9111 §3.4).
    partial: Option<Arc<StoredResponse>>,
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
    if let Some(found) = found.as_ref().filter(|found| found.entry().is_partial()) {
        return look_up_part(found, parts);
    }
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
            partial: None,
        }),
        None if cache.varies_on(&key) => Lookup::Miss(Miss::because(Forward::VaryMiss)),
        None => Lookup::Miss(Miss::because(Forward::UriMiss)),
    }
}

/// What a stored part means for a request (RFC 9111 §3.3, §3.4): a fresh part that holds
/// the one byte range asked for is served; a stale one is revalidated with the range asked
/// as it is; any other range request asks upstream for its range, to be combined with the
/// part; and a request for the whole resource, or a conditional one, goes on as if nothing
/// were stored (a complete response then replaces the part).
fn look_up_part(found: &Found, parts: &request::Parts) -> Lookup {
    let entry = found.entry();
    let range = parts
        .headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok());
    let conditional = parts.headers.contains_key(header::IF_NONE_MATCH)
        || parts.headers.contains_key(header::IF_MODIFIED_SINCE);
    let Some(range) = range.filter(|_| !conditional) else {
        return Lookup::Miss(Miss::because(Forward::Partial));
    };
    let covered = entry
        .part
        .and_then(|part| part.covers(range, entry.body.len()))
        .is_some();
    match found {
        Found::Fresh(entry) if covered => Lookup::Fresh(entry.clone()),
        _ if covered && entry.has_validators() => Lookup::Miss(Miss {
            reason: Forward::Stale,
            fallback: None,
            revalidating: Some(entry.clone()),
            partial: Some(entry.clone()),
        }),
        _ => Lookup::Miss(Miss {
            reason: Forward::Partial,
            fallback: None,
            revalidating: None,
            partial: Some(entry.clone()),
        }),
    }
}

impl Miss {
    fn because(reason: Forward) -> Miss {
        Miss {
            reason,
            fallback: None,
            revalidating: None,
            partial: None,
        }
    }

    /// The stored part this range request completes or revalidates, if any: then its range
    /// goes upstream as asked, and the response may be combined with the part.
    pub fn partial(&self) -> Option<&Arc<StoredResponse>> {
        self.partial.as_ref()
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
            partial: None,
        }
    }

    /// The conditional headers the flight asks with: the stored response's validators when it
    /// is being revalidated; `If-Range` with a stored part's strong `ETag` when the range
    /// completes it (RFC 9110 §13.1.5: a changed representation comes back whole, never as
    /// a part that would be combined with the old one); else none.
    pub fn validators(&self) -> Option<HeaderMap> {
        if let Some(entry) = &self.revalidating {
            return Some(entry.validators());
        }
        let etag = self.partial.as_ref()?.headers.get(header::ETAG)?;
        let mut if_range = HeaderMap::new();
        if !etag.as_bytes().starts_with(b"W/") {
            if_range.insert(header::IF_RANGE, etag.clone());
        }
        Some(if_range)
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
        if entry.is_partial() {
            answer_from_part(entry, &mut response, request);
        } else if entry.status == StatusCode::OK {
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

/// Turns a stored part into the answer to the `Range` request it covers: a 206 with the
/// slice asked for (the lookup serves a part for nothing else; anything else gets the part
/// as it was stored, with its own `Content-Range`).
fn answer_from_part(entry: &StoredResponse, response: &mut Response<Bytes>, request: &HeaderMap) {
    let range = request.get(header::RANGE).and_then(|v| v.to_str().ok());
    let Some((part, within)) = entry
        .part
        .zip(range)
        .and_then(|(part, range)| Some((part, part.covers(range, entry.body.len())?)))
    else {
        return;
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_RANGE,
        part.content_range(within.start, within.len()),
    );
    headers.insert(
        header::CONTENT_LENGTH,
        http::HeaderValue::from(within.len()),
    );
    *response.body_mut() = entry.body.slice(within);
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
