//! Refreshing a stale response in the background, at most once at a time per key:
//! conditionally when it has validators (a 304 renews the stored one), otherwise by fetching
//! it again. A failure keeps the stale response.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Response, StatusCode};
use http_body_util::BodyExt;

use super::freshness::{freshness, Freshness};
use super::store::ResponseCache;
use super::stored::StoredResponse;
use crate::coalesce::{sharing, Key};
use crate::route::Route;
use crate::upstream::{FetchError, UpstreamBody};

/// The claim on a key's one background refresh. Dropping it, run or not, ends the claim.
pub struct Refresh {
    route: Arc<Route>,
    cache: Arc<ResponseCache>,
    key: Key,
    stale: Arc<StoredResponse>,
    /// The headers of the request that found the entry stale, for its `Vary` variant.
    request_headers: HeaderMap,
}

impl Refresh {
    /// Claims the refresh of `key`; `None` if one is running already.
    pub(super) fn begin(
        route: &Arc<Route>,
        cache: &Arc<ResponseCache>,
        key: Key,
        stale: &Arc<StoredResponse>,
        request_headers: &HeaderMap,
    ) -> Option<Refresh> {
        cache.begin_refresh(&key).then(|| Refresh {
            route: route.clone(),
            cache: cache.clone(),
            key,
            stale: stale.clone(),
            request_headers: request_headers.clone(),
        })
    }

    /// The conditional headers the refresh asks with (none when the stored response has no
    /// validators, which makes it a plain fetch).
    pub fn validators(&self) -> HeaderMap {
        self.stale.validators()
    }

    /// Stores what `response` (a GET sent with [`Refresh::validators`], its head already
    /// cleaned) brings, on a task of its own.
    pub fn run(
        self,
        response: impl Future<Output = Result<Response<UpstreamBody>, FetchError>> + Send + 'static,
    ) {
        self.cache.count_revalidation();
        let sent = std::time::Instant::now();
        tokio::spawn(async move {
            if let Some((status, headers, body, freshness)) = self.renewal(response.await).await {
                self.cache.store(
                    self.key.clone(),
                    &self.request_headers,
                    sent,
                    status,
                    headers,
                    body,
                    freshness,
                );
            }
        });
    }

    /// What the refresh produced that should be stored: the renewed stale response after a
    /// 304, or the new response after a 200 (read whole, up to `max_replay_body`). `None`
    /// keeps the stale one.
    async fn renewal(
        &self,
        response: Result<Response<UpstreamBody>, FetchError>,
    ) -> Option<(StatusCode, HeaderMap, Bytes, Freshness)> {
        let route = &self.route;
        let policy = route.cache_policy.as_ref()?;
        let response = response.ok()?;
        let has_authorization = self.request_headers.contains_key(header::AUTHORIZATION);
        if response.status() == StatusCode::NOT_MODIFIED {
            let (headers, freshness) =
                self.stale
                    .renewed_by(response.headers(), policy, has_authorization)?;
            return Some((
                self.stale.status,
                headers,
                self.stale.body.clone(),
                freshness,
            ));
        }
        let sharing = sharing::judge_response(
            &route.coalesce,
            response.status(),
            &super::as_targeted(Some(policy), response.headers()),
        );
        if !sharing.shareable() {
            return None;
        }
        let freshness = freshness(
            policy,
            response.status(),
            response.headers(),
            has_authorization,
        )?;
        let (head, body) = response.into_parts();
        let limit = usize::try_from(route.coalesce.max_replay_body).unwrap_or(usize::MAX);
        let body = http_body_util::Limited::new(body, limit)
            .collect()
            .await
            .ok()?
            .to_bytes();
        Some((head.status, head.headers, body, freshness))
    }
}

impl Drop for Refresh {
    fn drop(&mut self) {
        self.cache.end_refresh(&self.key);
    }
}
