//! The last ten minutes of the outcome counters, sampled every two seconds, for the status
//! page's chart: requests, and the upstream requests coalescing and the cache saved.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::observe::stats::{Stats, StatsSnapshot};

/// How often a sample is taken, and how many are kept (ten minutes' worth).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
const KEPT: usize = 300;

/// One interval between two samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// When it ended, in seconds since the Unix epoch.
    pub at: f64,
    pub requests: u64,
    /// Requests that cost no upstream request: followers and cache hits.
    pub saved: u64,
    /// Followers / (leaders + followers), 0 when nothing was eligible.
    pub coalesce_ratio: f64,
}

#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<VecDeque<(f64, StatsSnapshot)>>,
}

impl History {
    /// Takes a sample now.
    pub fn sample(&self, stats: &Stats) {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        if samples.len() == KEPT + 1 {
            samples.pop_front();
        }
        samples.push_back((at, stats.snapshot()));
    }

    /// The intervals between the samples kept, oldest first.
    pub fn intervals(&self) -> Vec<Interval> {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        samples
            .iter()
            .zip(samples.iter().skip(1))
            .map(|((_, before), (at, after))| {
                let followers = after.followers - before.followers;
                let leaders = after.leaders - before.leaders;
                let shared = leaders + followers;
                Interval {
                    at: *at,
                    requests: after.requests - before.requests,
                    saved: followers + (after.hits - before.hits),
                    coalesce_ratio: if shared == 0 {
                        0.0
                    } else {
                        followers as f64 / shared as f64
                    },
                }
            })
            .collect()
    }

    /// Samples every [`SAMPLE_EVERY`] until dropped.
    pub async fn run(self: Arc<Self>, stats: Arc<Stats>) {
        let mut ticker = tokio::time::interval(SAMPLE_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.sample(&stats);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::outcome::Outcome;

    #[test]
    fn intervals_count_what_happened_between_samples_and_only_ten_minutes_are_kept() {
        let stats = Stats::default();
        let history = History::default();
        history.sample(&stats);
        stats.record_request(Outcome::Leader);
        for _ in 0..3 {
            stats.record_request(Outcome::Follower);
        }
        stats.record_request(Outcome::Hit);
        history.sample(&stats);
        let intervals = history.intervals();
        assert_eq!(intervals.len(), 1);
        assert_eq!((intervals[0].requests, intervals[0].saved), (5, 4));
        assert_eq!(intervals[0].coalesce_ratio, 0.75);
        for _ in 0..400 {
            history.sample(&stats);
        }
        assert_eq!(history.intervals().len(), KEPT);
    }
}
