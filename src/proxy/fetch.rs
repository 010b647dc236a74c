//! The upstream fetch a flight runs, and the background refresh of a stale cached response:
//! the two requests the proxy sends for a key rather than for one client.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{request, Method, Version};

use super::forward::{empty_request_body, request_body, send_upstream, upstream_request};
use super::{hygiene, Proxy};
use crate::cache::{Miss, Refresh, StorePlan};
use crate::coalesce::{sharing, Fetched, Flight, Key};
use crate::route::Route;
use crate::upstream::admission::Priority;
use crate::upstream::FetchError;

impl Proxy {
    /// The upstream fetch of a flight: the leader's request with an empty body (and the
    /// stored response's validators when it revalidates one), judged for sharing when its
    /// head arrives. Built only for leaders: followers never pay for an upstream request they
    /// do not send.
    // Everything here is what one fetch is for (the request, its key, what the cache offers,
    // its body, its flight); bundling them would only move the list elsewhere.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fetch(
        &self,
        route: &Arc<Route>,
        parts: &request::Parts,
        client: SocketAddr,
        key: Key,
        miss: &Miss,
        body: &Bytes,
        flight: &Arc<Flight>,
    ) -> impl Future<Output = Result<Fetched, FetchError>> + Send + 'static {
        let validators = miss.validators();
        let revalidating = miss.revalidating();
        let response =
            upstream_request(route, parts, client, request_body(body)).map(|mut request| {
                request.headers_mut().extend(validators);
                send_upstream(&self.stats, route, request, Priority::leader(flight))
            });
        let route = route.clone();
        let pass_memory = self.pass_memory.clone();
        let store_plan = StorePlan::for_request(&route, parts);
        async move {
            let mut response = response?.await?;
            hygiene::clean_response_headers(response.headers_mut(), Version::HTTP_11);
            let sharing = sharing::judge_response(
                &route.coalesce,
                response.status(),
                &crate::cache::as_targeted(route.cache_policy.as_ref(), response.headers()),
            );
            if let Some(rule) = &sharing.matched_rule {
                tracing::debug!(route = %route.name, path = key.path(), rule, "response not shareable; releasing followers");
                // Remembered before the flight leaves the table, so no request slips into a
                // new flight in between.
                pass_memory.remember(key, route.coalesce.pass_ttl);
            } else if sharing.shareable() {
                pass_memory.forget(&key);
            }
            let store = store_plan.and_then(|plan| {
                let status = response.status();
                plan.after_head(
                    status,
                    response.headers(),
                    sharing.shareable(),
                    revalidating,
                )
            });
            Ok(Fetched {
                response,
                sharing,
                store,
            })
        }
    }

    /// Sends the background refresh `refresh` claimed: a GET, conditional when the stored
    /// response has validators. If the request cannot be built, dropping the claim ends it.
    pub(super) fn refresh(
        &self,
        route: &Arc<Route>,
        parts: &request::Parts,
        client: SocketAddr,
        refresh: Refresh,
    ) {
        let Ok(mut request) = upstream_request(route, parts, client, empty_request_body()) else {
            return;
        };
        *request.method_mut() = Method::GET;
        for (name, value) in refresh.validators().iter() {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        let response = send_upstream(&self.stats, route, request, Priority::Pass);
        refresh.run(async move {
            let mut response = response.await?;
            hygiene::clean_response_headers(response.headers_mut(), Version::HTTP_11);
            Ok(response)
        });
    }
}
