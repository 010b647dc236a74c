//! Admission control for one upstream (`concurrency = { max, queue, queue_timeout, adaptive }`):
//! at most `max` requests outstanding (or fewer, with `adaptive`), the rest waiting in a
//! bounded queue, leaders first.
//!
//! The adaptive limit follows TCP Vegas: a request's latency over the fastest latency seen
//! tells how many requests were waiting inside the backend rather than being served
//! (in flight × (1 − fastest / latency)). Fewer than 3, and the limit grows (doubling each
//! round until the first time it must shrink, then one slot a round); more than 6, and it
//! shrinks by a tenth, at most once a round. It starts at 4 and stays between 1 and `max`, so
//! the backend runs just past the point where it starts to queue: its best throughput, without
//! anyone tuning a number.
//!
//! Why leaders first: a flight's leader answers every follower waiting on it, and a follower
//! never takes a slot at all, so when a slot frees, the leader with the most followers goes
//! before a request that only serves itself; among equals, the one that has waited longest.
//! A request that finds the queue full, or waits past `queue_timeout`, is refused (503 with
//! `Retry-After`): it never hangs, and never goes upstream anyway.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::config::ConcurrencyLimit;
pub use crate::observe::metrics::AdmissionMetrics;

/// What admission needs to know of a flight: how many clients its fetch answers. A trait, so
/// that this layer does not depend on the flight table above it.
pub trait Followers: Send + Sync {
    fn followers(&self) -> usize;
}

/// Who is asking for a slot.
#[derive(Debug, Clone)]
pub enum Priority {
    /// A request that serves only its own client.
    Pass,
    /// A flight's fetch: it ranks by the flight's followers when a slot frees.
    Leader(Weak<dyn Followers>),
}

impl std::fmt::Debug for dyn Followers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Followers({})", self.followers())
    }
}

impl Priority {
    /// The priority of `flight`'s fetch.
    pub fn leader<F: Followers + 'static>(flight: &Arc<F>) -> Priority {
        let flight: Arc<dyn Followers> = flight.clone();
        Priority::Leader(Arc::downgrade(&flight))
    }

    /// Higher goes first: leaders by their followers, then requests that serve themselves.
    fn rank(&self) -> u64 {
        match self {
            Priority::Pass => 0,
            Priority::Leader(flight) => 1 + flight.upgrade().map_or(0, |f| f.followers() as u64),
        }
    }
}

#[derive(Debug)]
struct Waiter {
    seq: u64,
    priority: Priority,
    slot: oneshot::Sender<()>,
}

#[derive(Debug, Default)]
struct State {
    in_flight: usize,
    /// The limit now: `max`, or the adaptive limit.
    limit: f64,
    /// The fastest latency seen, drifting up by 0.01 % a request (doubling over about 7,000)
    /// so that a backend that got slower for good is re-learned; faster drift would follow
    /// the congestion itself upwards.
    baseline: Option<Duration>,
    /// Samples since the last decrease: one decrease per round of `limit` requests.
    since_decrease: f64,
    /// Set by the first decrease; until then the limit grows by one a request, not one a
    /// round (slow start).
    congested: bool,
    /// In arrival order; the best is searched for when a slot frees (the queue is bounded).
    queue: Vec<Waiter>,
    next_seq: u64,
}

/// One upstream's limit and queue.
#[derive(Debug)]
pub struct Admission {
    limit: ConcurrencyLimit,
    state: Mutex<State>,
    metrics: AdmissionMetrics,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    QueueFull,
    QueueTimeout(Duration),
}

/// A slot, held while the request is outstanding (until its response body ends or is
/// dropped). Dropping it records the latency (for the adaptive limit) and hands the slot to
/// the best waiter.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    admitted: std::time::Instant,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.admission.limit.adaptive {
            self.admission.sample(self.admitted.elapsed());
        }
        self.admission.release();
    }
}

impl Admission {
    pub fn new(limit: ConcurrencyLimit, metrics: AdmissionMetrics) -> Admission {
        // Adaptive starts low, where it sees the backend's uncongested latency, and climbs
        // from there (from 4 to 32 in about 500 requests); fixed is just `max`.
        let start = if limit.adaptive {
            limit.max.min(4) as f64
        } else {
            limit.max as f64
        };
        metrics.limit.set(start as i64);
        Admission {
            limit,
            state: Mutex::new(State {
                limit: start,
                ..State::default()
            }),
            metrics,
        }
    }

    fn permit(self: &Arc<Self>) -> Permit {
        Permit {
            admission: self.clone(),
            admitted: std::time::Instant::now(),
        }
    }

    /// Vegas on one completed request's latency (see the module's note). `in_flight` counts
    /// the request itself: its slot is given back after the sample.
    fn sample(&self, latency: Duration) {
        /// Fewer requests than this waiting inside the backend: grow.
        const GROW_BELOW: f64 = 3.0;
        /// More than this: shrink.
        const SHRINK_ABOVE: f64 = 6.0;
        let mut state = self.lock();
        let baseline = match state.baseline {
            Some(best) => best.mul_f64(1.0001).min(latency),
            None => latency,
        };
        state.baseline = Some(baseline);
        state.since_decrease += 1.0;
        let waiting = state.in_flight as f64
            * (1.0 - baseline.as_secs_f64() / latency.as_secs_f64().max(f64::MIN_POSITIVE));
        let max = self.limit.max as f64;
        if waiting < GROW_BELOW {
            let step = if state.congested {
                1.0 / state.limit
            } else {
                1.0
            };
            state.limit = (state.limit + step).min(max);
        } else if waiting > SHRINK_ABOVE && state.since_decrease >= state.limit {
            state.limit = (state.limit * 0.9).max(1.0);
            state.since_decrease = 0.0;
            state.congested = true;
        }
        self.metrics.limit.set(state.limit as i64);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a slot, as `priority`.
    pub async fn admit(self: &Arc<Self>, priority: Priority) -> Result<Permit, Refused> {
        let (seq, slot) = {
            let mut state = self.lock();
            if state.in_flight < state.limit as usize && state.queue.is_empty() {
                state.in_flight += 1;
                self.metrics.admitted.inc();
                return Ok(self.permit());
            }
            if state.queue.len() >= self.limit.queue {
                self.metrics.rejected.inc();
                return Err(Refused::QueueFull);
            }
            let (tx, rx) = oneshot::channel();
            let seq = state.next_seq;
            state.next_seq += 1;
            state.queue.push(Waiter {
                seq,
                priority,
                slot: tx,
            });
            self.metrics.queued.set(state.queue.len() as i64);
            (seq, rx)
        };
        // The guard leaves the queue however this ends, even if this future is dropped.
        let mut queued = Queued {
            admission: self,
            seq,
            slot,
            admitted: false,
        };
        let given = tokio::time::timeout(self.limit.queue_timeout, &mut queued.slot).await;
        // Out of the queue first: from then on no slot can be sent, so one sent just as the
        // timeout fired is seen here and taken rather than lost.
        queued.leave();
        queued.admitted = match given {
            Ok(result) => result.is_ok(),
            Err(_) => queued.slot.try_recv().is_ok(),
        };
        if queued.admitted {
            self.metrics.admitted.inc();
            Ok(self.permit())
        } else {
            self.metrics.rejected.inc();
            Err(Refused::QueueTimeout(self.limit.queue_timeout))
        }
    }

    /// Gives a slot back, then fills every free slot (one, or more when the adaptive limit
    /// has grown; none when it has shrunk) with the best waiters still waiting.
    fn release(&self) {
        let mut state = self.lock();
        state.in_flight -= 1;
        while state.in_flight < state.limit as usize {
            let best = state
                .queue
                .iter()
                .enumerate()
                .max_by_key(|(_, w)| (w.priority.rank(), std::cmp::Reverse(w.seq)))
                .map(|(i, _)| i);
            let Some(best) = best else {
                break;
            };
            let waiter = state.queue.remove(best);
            if waiter.slot.send(()).is_ok() {
                state.in_flight += 1;
            }
        }
        self.metrics.queued.set(state.queue.len() as i64);
    }
}

/// A waiter's place in the queue. Dropped, it leaves the queue, and if a slot was sent to it
/// that it never took (its request was dropped meanwhile), hands the slot on: none is lost.
struct Queued<'a> {
    admission: &'a Admission,
    seq: u64,
    slot: oneshot::Receiver<()>,
    admitted: bool,
}

impl Queued<'_> {
    fn leave(&self) {
        let mut state = self.admission.lock();
        state.queue.retain(|w| w.seq != self.seq);
        self.admission.metrics.queued.set(state.queue.len() as i64);
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.leave();
        if !self.admitted && self.slot.try_recv().is_ok() {
            self.admission.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max: usize, queue: usize) -> Arc<Admission> {
        let limit = ConcurrencyLimit {
            max,
            queue,
            queue_timeout: Duration::from_secs(10),
            adaptive: false,
        };
        Arc::new(Admission::new(limit, AdmissionMetrics::default()))
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_max_are_admitted_and_the_queue_is_bounded() {
        let limit = admission(2, 1);
        let first = limit.admit(Priority::Pass).await.expect("a slot");
        let _second = limit.admit(Priority::Pass).await.expect("a slot");
        let waiting = tokio::spawn({
            let limit = limit.clone();
            async move { limit.admit(Priority::Pass).await.map(drop) }
        });
        tokio::task::yield_now().await;
        assert_eq!(
            limit.admit(Priority::Pass).await.err(),
            Some(Refused::QueueFull)
        );
        drop(first);
        assert_eq!(waiting.await.expect("task"), Ok(()));
        assert_eq!(limit.metrics.rejected.get(), 1);
        assert_eq!(limit.metrics.admitted.get(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_waits_past_queue_timeout_is_refused_and_frees_its_place() {
        let limit = admission(1, 1);
        let held = limit.admit(Priority::Pass).await.expect("a slot");
        let refused = limit.admit(Priority::Pass).await;
        assert_eq!(
            refused.err(),
            Some(Refused::QueueTimeout(Duration::from_secs(10)))
        );
        assert_eq!(limit.metrics.queued.get(), 0);
        drop(held);
        assert!(
            limit.admit(Priority::Pass).await.is_ok(),
            "the slot came back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_freed_slot_goes_to_a_leader_before_an_earlier_pass_request() {
        let limit = admission(1, 10);
        let held = limit.admit(Priority::Pass).await.expect("a slot");
        let order = Arc::new(Mutex::new(Vec::new()));
        let queue = |name: &'static str, priority: Priority| {
            let (limit, order) = (limit.clone(), order.clone());
            tokio::spawn(async move {
                let permit = limit.admit(priority).await.expect("admitted");
                order.lock().unwrap().push(name);
                drop(permit);
            })
        };
        let pass = queue("pass", Priority::Pass);
        tokio::task::yield_now().await;
        // A leader whose flight is gone still outranks a request serving only itself.
        struct Flight;
        impl Followers for Flight {
            fn followers(&self) -> usize {
                3
            }
        }
        let flight = Arc::new(Flight);
        let gone = Priority::leader(&flight);
        drop(flight);
        let leader = queue("leader", gone);
        tokio::task::yield_now().await;
        drop(held);
        pass.await.expect("pass");
        leader.await.expect("leader");
        assert_eq!(*order.lock().unwrap(), ["leader", "pass"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_is_dropped_leaves_no_slot_behind() {
        let limit = admission(1, 10);
        let held = limit.admit(Priority::Pass).await.expect("a slot");
        let gone = tokio::spawn({
            let limit = limit.clone();
            async move { limit.admit(Priority::Pass).await.map(drop) }
        });
        tokio::task::yield_now().await;
        gone.abort();
        let _ = gone.await;
        drop(held);
        let again = tokio::time::timeout(Duration::from_secs(1), limit.admit(Priority::Pass)).await;
        assert!(matches!(again, Ok(Ok(_))), "the slot is free again");
    }
}

#[cfg(test)]
mod adaptive_tests {
    use super::*;

    #[test]
    fn the_adaptive_limit_settles_where_a_saturated_backend_starts_to_slow_down() {
        let limit = ConcurrencyLimit {
            max: 64,
            queue: 10,
            queue_timeout: Duration::from_secs(1),
            adaptive: true,
        };
        let admission = Admission::new(limit, AdmissionMetrics::default());
        assert_eq!(admission.metrics.limit.get(), 4);
        // A backend of capacity 16 with a 20 ms base latency that slows down as
        // (in flight / capacity)² past its capacity; the limit is what is in flight.
        let latency =
            |in_flight: f64| Duration::from_millis(20).mul_f64((in_flight / 16.0).powi(2).max(1.0));
        let sample = |latency: Duration| {
            let mut state = admission.lock();
            state.in_flight = state.limit as usize;
            drop(state);
            admission.sample(latency);
        };
        // Slow start: one round of 4 requests at the base latency doubles the limit.
        for _ in 0..4 {
            sample(Duration::from_millis(20));
        }
        assert_eq!(admission.metrics.limit.get(), 8);
        for _ in 0..3000 {
            let now = admission.lock().limit;
            sample(latency(now));
        }
        // 16 to 21 in flight: 3 to 6 requests waiting inside the backend, whose throughput
        // there is at least 75 % of its best (16 per 20 ms).
        let settled = admission.metrics.limit.get();
        assert!((16..=21).contains(&settled), "settled at {settled}");
        // A backend that answers fast again lets it grow to max.
        for _ in 0..5000 {
            sample(Duration::from_millis(10));
        }
        assert_eq!(admission.metrics.limit.get(), 64);
    }
}
