//! Storing what a flight fetched: decided when the response head arrives, done when the
//! whole body is in (if the flight still holds all of it).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{request, Method, StatusCode};

use super::freshness::freshness;
use super::lookup::{cacheable_request, key};
use super::store::ResponseCache;
use super::stored::StoredResponse;
use crate::coalesce::Key;
use crate::route::Route;

/// Stores a completed body; the flight calls it, if the response may be stored.
pub type Store = Box<dyn FnOnce(Bytes) + Send>;

/// What a flight needs to store the response to its request: only a GET for the plain
/// resource, on a route with a cache.
pub struct StorePlan {
    route: Arc<Route>,
    cache: Arc<ResponseCache>,
    key: Key,
    request_headers: HeaderMap,
    /// When the request was about to go upstream: a response to it is not stored if its
    /// resource was invalidated after this (RFC 9111 §4.4).
    sent: Instant,
}

impl StorePlan {
    pub fn for_request(route: &Arc<Route>, parts: &request::Parts) -> Option<StorePlan> {
        let cache = route.cache.as_ref()?;
        (parts.method == Method::GET && cacheable_request(parts)).then(|| StorePlan {
            route: route.clone(),
            cache: cache.clone(),
            key: key(route, parts),
            request_headers: parts.headers.clone(),
            sent: Instant::now(),
        })
    }

    /// Decides on the response head. A 304 to a revalidation renews `revalidating` and
    /// leaves nothing to store; any other response gets a [`Store`] for its body when it may
    /// be stored (shareable, a cacheable status, fresh for a while).
    pub fn after_head(
        self,
        status: StatusCode,
        headers: &HeaderMap,
        shareable: bool,
        revalidating: Option<Arc<StoredResponse>>,
    ) -> Option<Store> {
        let policy = self.route.cache_policy.as_ref()?;
        let has_authorization = self.request_headers.contains_key(header::AUTHORIZATION);
        if status == StatusCode::NOT_MODIFIED {
            let entry = revalidating?;
            let (headers, fresh) = entry.renewed_by(headers, policy, has_authorization)?;
            let body = entry.body.clone();
            self.cache.store(
                self.key,
                &self.request_headers,
                self.sent,
                entry.status,
                headers,
                body,
                fresh,
            );
            return None;
        }
        if !shareable {
            return None;
        }
        let fresh = freshness(policy, status, headers, has_authorization)?;
        let headers = headers.clone();
        Some(Box::new(move |body| {
            self.cache.store(
                self.key,
                &self.request_headers,
                self.sent,
                status,
                headers,
                body,
                fresh,
            );
        }))
    }
}
