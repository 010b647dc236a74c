//! What a flight fetches: the admit, upstream-request and response phases for a key rather
//! than for one client. The leader's request (with the stored response's validators when it
//! revalidates one), judged for sharing when its head arrives, and a body that stores itself
//! in the route's cache when the plan made at the head says so. Built only for leaders:
//! followers never pay for an upstream request they do not send.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::Response;

use super::context::RequestContext;
use super::forward::{request_body, send_upstream, upstream_request};
use super::response;
use super::Proxy;
use crate::cache::{Miss, StorePlan, StoringBody};
use crate::coalesce::{Fetched, Flight};
use crate::fleet::{FetchBody, Fleet, Turn};
use crate::sharing::Key;
use crate::upstream::admission::Priority;
use crate::upstream::FetchError;

/// The body a flight reads: the upstream's (or the fleet's), storing itself when it may be
/// stored.
type FlightBody = StoringBody<FetchBody>;

impl Proxy {
    /// The fetch of `flight`, for `request` that missed as `miss` says. Boxed where it is
    /// made: the flight keeps it boxed (`Lead::start`), and a fetch made on the stack would
    /// be copied into its box whole (2.7 KB).
    pub(super) fn fetch(
        &self,
        request: &RequestContext,
        miss: &Miss,
        flight: &Arc<Flight>,
    ) -> Pin<Box<impl Future<Output = Result<Fetched<FlightBody>, FetchError>> + Send + 'static>>
    {
        let upstream = upstream_request(request, request_body(&request.body)).map(|mut sent| {
            if let Some(validators) = miss.validators() {
                sent.headers_mut().extend(validators);
            }
            super::trace::fetch_span(request.trace.as_deref(), flight, sent.headers_mut());
            sent
        });
        let route = request.route.clone();
        let store = route.cache.as_ref().and_then(|cache| {
            StorePlan::for_request(cache, request.cache_key(), &request.parts, miss.partial())
        });
        let revalidating = miss.revalidating();
        let fleet = fleet_ask(request, miss, &flight.key);
        let stats = self.stats.clone();
        let priority = Priority::leader(flight);
        Box::pin(async move {
            let turn = match fleet {
                // Boxed: only fleet routes wait here.
                Some((fleet, ask)) => Box::pin(fleet.enter(ask, stats.clone())).await,
                None => Turn::Alone,
            };
            let (response, lease) = match turn {
                Turn::Shared(response) => (response, None),
                upstream_turn => {
                    let lease = upstream_turn.into_lease();
                    let response = send_upstream(&stats, &route, upstream?, priority).await?;
                    (response.map(FetchBody::Upstream), lease)
                }
            };
            let response = response::clean(response);
            let sharing = response::judge(&route, &response);
            let response = match lease {
                Some(lease) => {
                    let (parts, body) = response.into_parts();
                    let body = lease.record(body, parts.status, &parts.headers, &sharing);
                    Response::from_parts(parts, body)
                }
                None => response,
            };
            let (status, headers) = (response.status(), response.headers());
            let store = store.and_then(|plan| {
                plan.after_head(status, headers, sharing.shareable(), revalidating)
            });
            let stored = store.is_some();
            let limit = route.coalesce.max_replay_body;
            Ok(Fetched {
                response: response.map(|body| StoringBody::new(body, store, limit)),
                sharing,
                stored,
            })
        })
    }
}

/// The route's fleet and what it needs of the flight for `key`, when the route has a fleet
/// and the request may use it (no credentials).
fn fleet_ask(
    request: &RequestContext,
    miss: &Miss,
    key: &Key,
) -> Option<(Arc<Fleet>, Arc<crate::fleet::Ask>)> {
    let route = &request.route;
    let fleet = route.fleet.as_ref()?;
    let headers = &request.parts.headers;
    if !Fleet::may_carry(headers) {
        return None;
    }
    let plain_miss = miss.validators().is_none() && miss.partial().is_none();
    let ask = fleet.ask(
        key,
        headers,
        &route.coalesce,
        route.cache_policy(),
        plain_miss,
        route.upstream.config.response_timeout,
    );
    Some((fleet.clone(), ask))
}
