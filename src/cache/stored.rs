//! A stored response, and what its age and freshness allow now: serve it, serve it stale,
//! revalidate it, or let it stand in for an upstream failure.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;

use super::conditional::updated_fields;
use super::freshness::{freshness, Freshness};
use super::partial::Part;
use crate::config::CachePolicy;

/// A stored response.
#[derive(Debug)]
pub struct StoredResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub(super) stored_at: Instant,
    /// The response's age when it was stored (its `Age` header).
    pub(super) initial_age: Duration,
    /// How long after `stored_at` it stays fresh.
    pub(super) fresh_for: Duration,
    /// How long past freshness it may be served while one refresh runs (RFC 5861
    /// `stale-while-revalidate`, else the route's `grace`).
    pub(super) stale_while_revalidate: Duration,
    /// How long past freshness it may be served when the upstream fails (`stale-if-error`,
    /// else `grace`).
    pub(super) stale_if_error: Duration,
    /// How long past freshness it may be served when the upstream cannot be reached (the
    /// route's `stale_if_unreachable`); zero when its directives forbid stale.
    pub(super) stale_if_unreachable: Duration,
    /// `Cache-Control: no-cache`: never served without a successful revalidation.
    pub(super) always_revalidate: bool,
    /// For a stored 206, the part of the representation its body is (RFC 9111 §3.3).
    pub(super) part: Option<Part>,
}

impl StoredResponse {
    pub(super) fn age(&self, now: Instant) -> Duration {
        self.initial_age + now.saturating_duration_since(self.stored_at)
    }

    pub fn is_fresh(&self, now: Instant) -> bool {
        !self.always_revalidate && now.saturating_duration_since(self.stored_at) < self.fresh_for
    }

    /// The conditional headers that revalidate it: `If-None-Match` from its `ETag`,
    /// `If-Modified-Since` from its `Last-Modified`. Empty when it has neither.
    pub fn validators(&self) -> HeaderMap {
        let mut validators = HeaderMap::new();
        if let Some(etag) = self.headers.get(header::ETAG) {
            validators.insert(header::IF_NONE_MATCH, etag.clone());
        }
        if let Some(modified) = self.headers.get(header::LAST_MODIFIED) {
            validators.insert(header::IF_MODIFIED_SINCE, modified.clone());
        }
        validators
    }

    /// The stored response renewed by a 304's header fields (RFC 9111 §4.3.4), with the
    /// freshness they give it; `None` if it may no longer be stored.
    pub fn renewed_by(
        &self,
        not_modified: &HeaderMap,
        policy: &CachePolicy,
        request_has_authorization: bool,
    ) -> Option<(HeaderMap, Freshness)> {
        let headers = updated_fields(&self.headers, not_modified);
        let freshness = freshness(policy, self.status, &headers, request_has_authorization)?;
        Some((headers, freshness))
    }

    /// Whether its `Surrogate-Key` field names `tag` (space-separated keys, as Fastly and
    /// Varnish's xkey read them).
    pub fn has_surrogate_key(&self, tag: &str) -> bool {
        self.headers
            .get_all("surrogate-key")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(str::split_ascii_whitespace)
            .any(|key| key == tag)
    }

    /// Whether it can be revalidated (it has an `ETag` or a `Last-Modified`).
    pub fn has_validators(&self) -> bool {
        self.headers.contains_key(header::ETAG) || self.headers.contains_key(header::LAST_MODIFIED)
    }

    /// A copy renewed by a 304's fields, fresh from now as they say; `None` if they make it
    /// unstorable.
    pub fn renewed(
        &self,
        not_modified: &HeaderMap,
        policy: &CachePolicy,
        request_has_authorization: bool,
    ) -> Option<StoredResponse> {
        let (headers, freshness) =
            self.renewed_by(not_modified, policy, request_has_authorization)?;
        let renewed = StoredResponse::new(self.status, headers, self.body.clone(), freshness);
        Some(renewed.with_part(self.part))
    }

    pub(super) fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        freshness: Freshness,
    ) -> StoredResponse {
        StoredResponse {
            status,
            headers,
            body,
            stored_at: Instant::now(),
            initial_age: freshness.initial_age,
            fresh_for: freshness.fresh_for,
            stale_while_revalidate: freshness.stale_while_revalidate,
            stale_if_error: freshness.stale_if_error,
            stale_if_unreachable: freshness.stale_if_unreachable,
            always_revalidate: freshness.always_revalidate,
            part: None,
        }
    }

    /// The same response as the stored `part` of its representation.
    pub(super) fn with_part(mut self, part: Option<Part>) -> StoredResponse {
        self.part = part;
        self
    }

    /// Whether it is a part of its representation (a stored 206), not the whole.
    pub fn is_partial(&self) -> bool {
        self.part.is_some()
    }

    pub(super) fn stale_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.stored_at)
            .saturating_sub(self.fresh_for)
    }

    /// Whether it may stand in for an upstream failure now: an error status (a 5xx), or an
    /// upstream that could not be reached at all (`unreachable`), for which the route allows
    /// longer.
    pub fn may_serve_on_error(&self, now: Instant, unreachable: bool) -> bool {
        let window = match unreachable {
            true => self.stale_if_unreachable,
            false => self.stale_if_error,
        };
        !self.always_revalidate && self.stale_for(now) <= window
    }

    /// Seconds of freshness left at `now`, negative once stale (`Cache-Status` `ttl`).
    pub fn ttl(&self, now: Instant) -> i64 {
        let held = now.saturating_duration_since(self.stored_at);
        if self.always_revalidate {
            return -(held.as_secs() as i64);
        }
        match self.fresh_for.checked_sub(held) {
            Some(left) => left.as_secs() as i64,
            None => -(held.saturating_sub(self.fresh_for).as_secs() as i64),
        }
    }

    /// The value of the `Age` header to send now, in whole seconds.
    pub fn age_header(&self, now: Instant) -> HeaderValue {
        HeaderValue::from(self.age(now).as_secs())
    }
}
