//! One request's part in a flight: joining the table, waiting for the head (no longer than
//! `max_wait` for a follower), and whether a follower may take the head it got.

use std::future::Future;
use std::sync::Arc;

use http::HeaderMap;

use super::{sharing, Fetched, Flight, Group, Key, Role, SharedHead, Subscription};
use crate::observe::stats::Stats;
use crate::route::Route;
use crate::upstream::FetchError;

/// How waiting on a flight ended.
pub enum Waited {
    /// The flight's head (or the error that ended it first), for a client with this role.
    Head {
        role: Role,
        subscription: Subscription,
        head: Result<Arc<SharedHead>, FetchError>,
    },
    /// A follower waited past `max_wait`, and left the flight: it goes upstream alone.
    GaveUp,
}

/// Joins the flight for `key` (or starts one whose fetch is `fetch()`), and waits for its
/// head. A follower without `max_wait` waits as long as the flight may take, which the
/// upstream's `response_timeout` bounds: a timer of the same length would only race the
/// flight's own 504.
pub async fn join_and_wait<F, Fut>(
    group: &Arc<Group>,
    stats: &Stats,
    key: Key,
    route: &Arc<Route>,
    request_headers: &HeaderMap,
    fetch: F,
) -> Waited
where
    F: FnOnce(&Arc<Flight>) -> Fut,
    Fut: Future<Output = Result<Fetched, FetchError>> + Send + 'static,
{
    let (role, subscription) = group.join(key, route, request_headers, fetch);
    let flight = subscription.flight().clone();
    let waiting = (role == Role::Follower).then(|| Waiting::new(stats));
    let head = match (role, route.coalesce.max_wait) {
        (Role::Leader, _) | (Role::Follower, None) => flight.head().await,
        (Role::Follower, Some(max_wait)) => {
            match tokio::time::timeout(max_wait, flight.head()).await {
                Ok(head) => head,
                Err(_) => {
                    drop(subscription);
                    tracing::debug!(
                        flight = flight.id,
                        "follower waited past max_wait; going upstream alone"
                    );
                    return Waited::GaveUp;
                }
            }
        }
    };
    drop(waiting);
    Waited::Head {
        role,
        subscription,
        head,
    }
}

/// What a follower does with a head it got.
pub enum Verdict {
    /// The response is for it too.
    Take,
    /// Not for it: go upstream alone. Released at once, all together, so nobody queues
    /// behind a response only its leader may have.
    GoAlone,
    /// The response varies on headers whose values differ from the leader's: share with the
    /// clients that sent the same values, in the flight of this variant key.
    Rejoin(Key),
}

/// Judges a follower's head: whether it may be shared at all, and whether the follower's
/// values for the headers its `Vary` names match the leader's.
pub fn follower_verdict(
    head: &SharedHead,
    flight: &Flight,
    key: &Key,
    request_headers: &HeaderMap,
) -> Verdict {
    if !head.sharing.shareable() {
        return Verdict::GoAlone;
    }
    if sharing::vary_matches(&head.sharing.vary, request_headers, &flight.leader_headers) {
        return Verdict::Take;
    }
    if key.is_variant() {
        return Verdict::GoAlone;
    }
    Verdict::Rejoin(key.variant(&head.sharing.vary, request_headers))
}

/// Counts a follower in `followers_waiting` until its flight's head arrives or it gives up.
struct Waiting<'a>(&'a Stats);

impl<'a> Waiting<'a> {
    fn new(stats: &'a Stats) -> Waiting<'a> {
        stats.metrics.followers_waiting.inc();
        Waiting(stats)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.metrics.followers_waiting.dec();
    }
}
