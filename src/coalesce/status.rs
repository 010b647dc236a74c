//! What a request is told about its key, from entering the coordinator's table to being
//! served: one [`Status`], and the decisions that produce it (`enter`, `refresh`, and a
//! subscription's `settle`). The proxy has one reaction to each status (`proxy::share`);
//! nothing else decides who fetches.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use http::HeaderMap;

use super::coordinator::{Coordinator, Slot};
use super::flight::{Flight, FlightError, Scope, SharedHead};
use super::subscription::Subscription;
use crate::sharing::{vary_matches, Key, KeyHash};

/// Everything a request can be told about its key, from entering the table to being served.
/// The proxy has one reaction to each (`proxy::share`); nothing else decides who fetches.
pub enum Status {
    /// Nobody is fetching the key: this request's fetch starts a flight ([`Lead::start`]).
    Lead(Lead),
    /// A fetch is in the air: wait for its head ([`Subscription::settle`]).
    Follow(Subscription),
    /// The flight's head (or its error, when errors are shared) is this request's answer.
    Done(Subscription, Result<Arc<SharedHead>, FlightError>),
    /// The flight failed and its failure is not shared (`share_errors = false`): enter again,
    /// and one of those that do becomes the new leader. Once per request.
    ReElect,
    /// The response varies on headers whose values differ from the leader's: enter again
    /// under this key, with the clients that sent the same values.
    Rekey(Key),
    /// The answer is not for this request (not shareable, or the key is remembered as such):
    /// go upstream alone.
    GiveUp,
    /// A follower waited past `max_wait`: go upstream alone.
    TimedOut,
}

/// A new flight whose fetch this request must start ([`Lead::start`], in `fetch`). Dropping it
/// unstarted ends the flight (its clients get [`FlightError::Cancelled`]), so no flight waits
/// for a fetch that never comes.
pub struct Lead {
    pub(super) flight: Arc<Flight>,
    /// Taken when the fetch starts (it then belongs to the fetch and the leader's
    /// subscription); still here when the lead is dropped unstarted.
    pub(super) coordinator: Option<Arc<Coordinator>>,
}

impl Lead {
    pub fn flight(&self) -> &Arc<Flight> {
        &self.flight
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        if let Some(coordinator) = self.coordinator.take() {
            coordinator.finish(&self.flight, Err(FlightError::Cancelled));
        }
    }
}

/// What a follower brings to its flight's head, to judge whether the head is for it.
pub struct Follower<'a> {
    /// Its key: a variant key is not narrowed again.
    pub key: &'a Key,
    /// Its request headers, compared with the leader's on the fields `Vary` names.
    pub headers: &'a HeaderMap,
    /// Whether it may still re-elect a leader after a failure it is not given (once).
    pub may_reelect: bool,
}

impl Subscription {
    /// Waits for the flight's head and says what it means for this client: for the leader,
    /// always [`Status::Done`]; for a follower, `Done` when the head is for it too, or why not.
    /// A follower with `max_wait` gives up waiting after it ([`Status::TimedOut`]); without
    /// one it waits as long as the flight may take, which the upstream's `response_timeout`
    /// bounds (a timer of the same length would only race the flight's own 504).
    // Not an `async fn`: its arguments would take their room twice in the future (as
    // arguments and as the locals they are moved into), and a waiting client pays for each.
    #[allow(clippy::manual_async_fn)] // the argument's room, above
    pub fn settle<'a>(self, follower: &'a Follower<'_>) -> impl Future<Output = Status> + 'a {
        async move {
            let flight = self.flight().clone();
            let reader = self.reader();
            let head = std::future::poll_fn(|cx| flight.poll_head(reader, cx));
            if self.is_leader() {
                return Status::Done(self, head.await);
            }
            let waiting = self.coordinator().stats.follower_waiting();
            let head = match flight.scope.policy.max_wait {
                None => head.await,
                Some(max_wait) => match tokio::time::timeout(max_wait, head).await {
                    Ok(head) => head,
                    Err(_) => {
                        tracing::debug!(
                            flight = flight.id,
                            "follower waited past max_wait; going upstream alone"
                        );
                        return Status::TimedOut;
                    }
                },
            };
            drop(waiting);
            match self.verdict(head, follower) {
                Status::Done(subscription, Ok(head))
                    if head.sharing.status_in_trailers && follower.may_reelect =>
                {
                    let failed = std::future::poll_fn(|cx| flight.poll_trailers_error(reader, cx));
                    match failed.await {
                        // As for a 5xx under `share_errors = false`: one new leader, once.
                        true => Status::ReElect,
                        false => Status::Done(subscription, Ok(head)),
                    }
                }
                status => status,
            }
        }
    }

    /// A follower's reaction to its flight's head: take it, or why not.
    fn verdict(
        self,
        head: Result<Arc<SharedHead>, FlightError>,
        follower: &Follower<'_>,
    ) -> Status {
        let policy = &self.flight().scope.policy;
        let head = match head {
            Err(_) if !policy.share_errors && follower.may_reelect => return Status::ReElect,
            Err(err) => return Status::Done(self, Err(err)),
            Ok(head) => head,
        };
        if head.sharing.matched_rule.is_some() {
            return Status::GiveUp;
        }
        if head.sharing.unshared_error {
            // One more try through one new leader; after that the error is shared, so a
            // failing origin costs two requests per herd, not one per client.
            return match follower.may_reelect {
                true => Status::ReElect,
                false => Status::Done(self, Ok(head)),
            };
        }
        let leader = &self.flight().leader_headers;
        if vary_matches(&head.sharing.vary, follower.headers, leader) {
            return Status::Done(self, Ok(head));
        }
        if follower.key.is_variant() {
            return Status::GiveUp;
        }
        Status::Rekey(follower.key.variant(&head.sharing.vary, follower.headers))
    }
}

impl Coordinator {
    /// A request enters the table for `key`: it leads a new flight, follows the one in the
    /// air, or gives up at once when the key is remembered as not shareable. A flight that is
    /// closed to joiners (past `max_replay_body`) or full (`max_followers`) is replaced in the
    /// table by the new one; it goes on serving its own clients.
    pub fn enter(self: &Arc<Self>, key: &Key, scope: &Scope, headers: &HeaderMap) -> Status {
        let mut shard = self.shard(key);
        match shard.get(key) {
            Some(Slot::Flight(flight)) => {
                if let Some(reader) = flight.try_join() {
                    self.stats.record_join();
                    return Status::Follow(Subscription::follower(self, flight, reader));
                }
            }
            Some(Slot::Pass { until }) if *until > Instant::now() => return Status::GiveUp,
            Some(Slot::Pass { .. }) | None => {}
        }
        Status::Lead(self.lead(&mut shard, key, scope, headers))
    }

    /// A background refresh of `key` (a stale cached response): a flight whose only client
    /// is the cache, unless the key is being fetched already (or remembered as not
    /// shareable), in which case that fetch is the refresh.
    pub fn refresh(
        self: &Arc<Self>,
        key: &Key,
        scope: &Scope,
        headers: &HeaderMap,
    ) -> Option<Lead> {
        let mut shard = self.shard(key);
        match shard.get(key) {
            Some(Slot::Flight(_)) => None,
            Some(Slot::Pass { until }) if *until > Instant::now() => None,
            _ => Some(self.lead(&mut shard, key, scope, headers)),
        }
    }

    fn lead(
        self: &Arc<Self>,
        shard: &mut HashMap<Key, Slot, KeyHash>,
        key: &Key,
        scope: &Scope,
        headers: &HeaderMap,
    ) -> Lead {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let flight = Flight::new(
            id,
            key.clone(),
            scope.clone(),
            headers.clone(),
            self.budget.clone(),
        );
        let flight = Arc::new(flight);
        shard.insert(key.clone(), Slot::Flight(flight.clone()));
        Lead {
            flight,
            coordinator: Some(self.clone()),
        }
    }
}
