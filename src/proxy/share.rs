//! Phases 2 and 3 for a request that may share: look up (the route's cache) and coalesce (the
//! coordinator's [`Status`] for its key, with one reaction to each), and the replies they
//! make: from the cache, from a flight, or from going upstream alone after all.

use std::future::Future;
use std::sync::Arc;

use http::header;
use http_body_util::BodyExt;

use super::context::RequestContext;
use super::forward::request_body;
use super::ranged;
use super::reply::{cached, error_reply, set_outcome, Reply, ServedBy};
use super::Proxy;
use crate::cache::status::{CacheStatus, Forward};
use crate::cache::{self, Lookup, Miss, Settled, StoredResponse};
use crate::coalesce::{FanoutBody, FlightError, Follower, SharedHead, Status, Subscription};
use crate::observe::outcome::Outcome;
use crate::sharing::{Key, RANGE_AND_CONDITIONAL};
use crate::upstream::BoxError;

impl Proxy {
    /// Answers a request that may share: from the cache, else from the flight for its key,
    /// unless it goes upstream on its own after all. A byte range that misses a cached route
    /// is fetched whole (so the cache stores it) and cut to the range asked for.
    ///
    /// This and `coalesce` are not `async fn`s: an async fn's arguments take their room twice
    /// in its future (as arguments and as the locals they are moved into), and a waiting
    /// client pays for each byte.
    #[allow(clippy::manual_async_fn)] // the argument's room, above
    pub(super) fn share<'a>(
        &'a self,
        request: &'a RequestContext,
    ) -> impl Future<Output = Reply> + 'a {
        async move {
            let miss = match self.look_up(request) {
                Ok(served) => return served,
                Err(miss) => miss,
            };
            if ranged::fetches_whole(request) {
                // Boxed: the rare path, and inline its state would grow every shared request's.
                return Box::pin(self.share_range(request, miss)).await;
            }
            self.coalesce(request, &miss).await
        }
    }

    /// A byte range that missed a cached route: the whole resource through its flight, so
    /// that the cache stores it, cut to the range asked for. A range that completes or
    /// revalidates a stored part goes upstream as asked instead (a whole answer is cut too).
    async fn share_range(&self, request: &RequestContext, miss: Miss) -> Reply {
        let Some((whole, range)) = ranged::whole_resource(request) else {
            return self.coalesce(request, &miss).await;
        };
        let asked = if miss.partial().is_some() {
            request
        } else {
            &whole
        };
        ranged::cut(self.coalesce(asked, &miss).await, &range)
    }

    /// The look-up phase: a fresh stored response is the answer; a stale one too, while it is
    /// refreshed in the background; otherwise the miss goes on, with what the cache offers.
    fn look_up(&self, request: &RequestContext) -> Result<Reply, Miss> {
        let cache = request.route.cache.as_deref();
        match cache::look_up(cache, || request.cache_key(), &request.parts) {
            Lookup::Fresh(entry) => Ok(cached(&entry, request, Outcome::Hit)),
            Lookup::Stale(entry) => {
                self.refresh(request, &entry);
                self.stats.record_stale_served();
                Ok(cached(&entry, request, Outcome::Stale))
            }
            Lookup::Miss(miss) => Err(miss),
        }
    }

    /// The coalesce phase: what the coordinator says about the request's key, and the one
    /// reaction to each status, until the request has its answer.
    #[allow(clippy::manual_async_fn)] // arguments held once: see `share`
    fn coalesce<'a>(
        &'a self,
        request: &'a RequestContext,
        miss: &'a Miss,
    ) -> impl Future<Output = Reply> + 'a {
        async move {
            let mut key = request.flight_key(miss.validators().as_ref());
            let (scope, headers) = (&request.route.scope, &request.parts.headers);
            let mut may_reelect = true;
            let mut status = self.coordinator.enter(&key, scope, headers);
            loop {
                let follower = Follower {
                    key: &key,
                    headers,
                    may_reelect,
                };
                status = match status {
                    Status::Lead(lead) => {
                        let fetch = self.fetch(request, miss, lead.flight());
                        lead.start(fetch).settle(&follower).await
                    }
                    Status::Follow(subscription) => subscription.settle(&follower).await,
                    Status::Done(subscription, head) => {
                        return self.answer(request, miss, subscription, head)
                    }
                    Status::ReElect => {
                        // The flight failed (a 5xx or no head): its error is not known here, so
                        // only what a 5xx would allow.
                        if let Some(stale) = miss.stand_in(false) {
                            return self.stand_in(request, miss, stale, None, true);
                        }
                        may_reelect = false;
                        self.coordinator.enter(&key, scope, headers)
                    }
                    Status::Rekey(variant) => {
                        key = variant;
                        self.coordinator.enter(&key, scope, headers)
                    }
                    Status::GiveUp | Status::TimedOut => {
                        return self.alone(request, miss, &key).await
                    }
                };
            }
        }
    }

    /// The answer a flight's head (or its error) gives one of its clients: a stored response
    /// when the cache says so (a stale one standing in for a failure, or one a 304
    /// confirmed), else the flight's response or its error.
    fn answer(
        &self,
        request: &RequestContext,
        miss: &Miss,
        subscription: Subscription,
        head: Result<Arc<SharedHead>, FlightError>,
    ) -> Reply {
        let seen = head.as_ref().ok().map(|h| (h.status, &h.headers));
        let authorized = request.parts.headers.contains_key(header::AUTHORIZATION);
        match miss.settle(seen, request.route.cache_policy(), authorized) {
            Some(Settled::StandsIn(stale)) => {
                let status = seen.map(|(status, _)| status);
                let collapsed = !subscription.is_leader();
                drop(subscription);
                self.stand_in(request, miss, &stale, status, collapsed)
            }
            Some(Settled::Confirmed(entry)) => confirmed(request, &subscription, &entry),
            None => match head {
                Ok(head) => fan_out(request, miss.reason, &head, subscription),
                Err(err) => shared_error(request, miss.reason, &subscription, &err),
            },
        }
    }

    /// A stale stored response served because the upstream failed (`upstream` is the status
    /// it answered with, if any) to a client of a flight (`collapsed`: not its leader).
    fn stand_in(
        &self,
        request: &RequestContext,
        miss: &Miss,
        stale: &Arc<StoredResponse>,
        upstream: Option<http::StatusCode>,
        collapsed: bool,
    ) -> Reply {
        self.stats.record_stale_on_error();
        cached(stale, request, Outcome::Stale).with_cache_status(CacheStatus::Forward {
            reason: miss.reason,
            status: upstream,
            stored: false,
            collapsed,
            ttl: Some(stale.ttl(std::time::Instant::now())),
        })
    }

    /// A shared request going upstream on its own after all (remembered as not shareable,
    /// past `max_wait`, or released by its flight). Boxed: it is the rare path, and `pass`'s
    /// state inline would make every waiting follower's future larger.
    async fn alone(&self, request: &RequestContext, miss: &Miss, key: &Key) -> Reply {
        let body = request_body(&request.body);
        let reply = Box::pin(self.pass(request, body, Some(key))).await;
        let status = reply.response.status();
        reply.with_cache_status(CacheStatus::Forward {
            reason: miss.reason,
            status: Some(status),
            stored: false,
            collapsed: false,
            ttl: None,
        })
    }

    /// A stale response's background refresh: the flight a request that finds it past its
    /// `stale-while-revalidate` window would make (a GET of the resource, with its
    /// validators), so that such a request joins the refresh instead of fetching again.
    /// Nothing when that flight is in the air already. The cache is the flight's only
    /// client: the body is read to its end, where it stores itself.
    fn refresh(&self, request: &RequestContext, stale: &Arc<StoredResponse>) {
        let mut headers = request.parts.headers.clone();
        for name in &RANGE_AND_CONDITIONAL {
            headers.remove(name);
        }
        let refresh = request.as_get(headers);
        let miss = Miss::refreshing(stale);
        let key = refresh.flight_key(miss.validators().as_ref());
        let route = &refresh.route;
        let Some(lead) = self
            .coordinator
            .refresh(&key, &route.scope, &refresh.parts.headers)
        else {
            return;
        };
        if let Some(cache) = &route.cache {
            cache.count_revalidation();
        }
        let fetch = self.fetch(&refresh, &miss, lead.flight());
        let mut subscription = lead.start(fetch);
        tokio::spawn(async move { while let Some(Ok(_)) = subscription.next_chunk().await {} });
    }
}

fn outcome_of(subscription: &Subscription) -> Outcome {
    match subscription.is_leader() {
        true => Outcome::Leader,
        false => Outcome::Follower,
    }
}

/// A stored response a 304 to the flight's revalidation confirmed.
fn confirmed(
    request: &RequestContext,
    subscription: &Subscription,
    entry: &Arc<StoredResponse>,
) -> Reply {
    let outcome = outcome_of(subscription);
    let mut reply = cached(entry, request, outcome);
    reply.flight = Some(ServedBy::of(subscription.flight()));
    reply.with_cache_status(CacheStatus::Forward {
        reason: Forward::Stale,
        status: Some(http::StatusCode::NOT_MODIFIED),
        stored: true,
        collapsed: outcome == Outcome::Follower,
        ttl: None,
    })
}

/// A flight's response for one of its clients: the shared head, and a body that reads the
/// flight's chunks at this client's own pace.
fn fan_out(
    request: &RequestContext,
    reason: Forward,
    head: &SharedHead,
    subscription: Subscription,
) -> Reply {
    let outcome = outcome_of(&subscription);
    let flight = ServedBy::of(subscription.flight());
    let fields = subscription.take_leaders_fields();
    let body = FanoutBody::new(subscription, head.empty).map_err(BoxError::from);
    let mut response = http::Response::new(body.boxed_unsync());
    *response.status_mut() = head.status;
    *response.headers_mut() = fields.unwrap_or_else(|| head.headers.clone());
    set_outcome(
        &mut response,
        request.route.coalesce.outcome_header.as_ref(),
        outcome,
    );
    Reply {
        response,
        outcome,
        flight: Some(flight),
        cache_status: Some(CacheStatus::Forward {
            reason,
            status: Some(head.status),
            stored: head.stored,
            collapsed: outcome == Outcome::Follower,
            ttl: None,
        }),
    }
}

/// The answer every client of a flight gets when its fetch failed before the head.
fn shared_error(
    request: &RequestContext,
    reason: Forward,
    subscription: &Subscription,
    err: &FlightError,
) -> Reply {
    let route = &request.route;
    let outcome = outcome_of(subscription);
    if outcome == Outcome::Leader {
        let what = "shared upstream fetch failed";
        crate::observe::failure_log::upstream_failed(&route.name, err.kind(), err, what);
    }
    Reply {
        response: error_reply(
            route.coalesce.outcome_header.as_ref(),
            outcome,
            err.status(),
        ),
        outcome,
        flight: Some(ServedBy::of(subscription.flight())),
        cache_status: Some(CacheStatus::Forward {
            reason,
            status: None,
            stored: false,
            collapsed: outcome == Outcome::Follower,
            ttl: None,
        }),
    }
}
