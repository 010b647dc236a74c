//! Counters and histograms the request path can bump for the price of uncontended atomic
//! adds.
//!
//! prometheus-client's `Histogram` takes a lock on every observation, and its `Counter` is one
//! atomic that every worker adds to: either way, the same cache line moves between cores at
//! every request of a busy route, which costs far more than the add. These keep a shard per
//! worker (`runtime::current`), each on cache lines of its own, and add the shards up only when
//! `/metrics` (or the stats line) reads them. A histogram's sum is kept in integer units of its
//! resolution (nanoseconds for durations), so adding to it is one atomic add rather than a
//! compare-and-swap loop on a float.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Shards: more than any worker count the proxy is run with here, a power of two; workers
/// beyond it share shards (still correct, only contended).
const SHARDS: usize = 8;

fn shard() -> usize {
    crate::runtime::current() % SHARDS
}

/// A monotonic counter, sharded per worker; cheap to clone (an `Arc`).
#[derive(Debug, Clone, Default)]
pub struct Counter {
    shards: Arc<[Slot; SHARDS]>,
}

/// One worker's count, alone on its cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Slot(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.inc_by(1);
    }

    pub fn inc_by(&self, n: u64) {
        self.shards[shard()].0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

impl TypedMetric for Counter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for Counter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A cumulative histogram with fixed upper bounds, cheap to clone (an `Arc`).
#[derive(Debug, Clone)]
pub struct Histogram {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Upper bounds, ascending; an implicit `+Inf` bucket follows.
    bounds: Box<[f64]>,
    /// Units of the sum per unit observed (1e9: durations in seconds summed as nanoseconds).
    resolution: f64,
    shards: Box<[Shard]>,
}

/// One worker's counters, aligned so that two workers never write one cache line.
#[derive(Debug)]
#[repr(align(128))]
struct Shard {
    /// Per bucket (not cumulative), then `+Inf`.
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Histogram {
    /// A histogram with `bounds` whose sum is kept in units of `1 / resolution`.
    pub fn new(bounds: impl IntoIterator<Item = f64>, resolution: f64) -> Histogram {
        let bounds: Box<[f64]> = bounds.into_iter().collect();
        let shards = (0..SHARDS)
            .map(|_| Shard {
                counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum: AtomicU64::new(0),
            })
            .collect();
        Histogram {
            inner: Arc::new(Inner {
                bounds,
                resolution,
                shards,
            }),
        }
    }

    /// 1 ms to about 33 s, doubling; durations in seconds.
    pub fn latency() -> Histogram {
        Histogram::new((0..16).map(|i| 0.001 * f64::from(1u32 << i)), 1e9)
    }

    pub fn observe(&self, value: f64) {
        let inner = &*self.inner;
        let shard = &inner.shards[shard()];
        let bucket = inner
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(inner.bounds.len());
        shard.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let units = (value.max(0.0) * inner.resolution) as u64;
        shard.sum.fetch_add(units, Ordering::Relaxed);
    }

    /// The sum, the count, and each upper bound with its cumulative count.
    pub fn get(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let inner = &*self.inner;
        let mut per_bucket = vec![0u64; inner.bounds.len() + 1];
        let mut sum = 0u64;
        for shard in inner.shards.iter() {
            for (total, count) in per_bucket.iter_mut().zip(shard.counts.iter()) {
                *total += count.load(Ordering::Relaxed);
            }
            sum += shard.sum.load(Ordering::Relaxed);
        }
        let mut cumulative = 0;
        let buckets = inner
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(per_bucket)
            .map(|(bound, count)| {
                cumulative += count;
                (bound, cumulative)
            })
            .collect();
        (sum as f64 / inner.resolution, cumulative, buckets)
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.get();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_the_sum_keeps_its_resolution() {
        let histogram = Histogram::new([1.0, 2.0, 5.0], 1e3);
        for value in [0.5, 1.0, 1.5, 4.0, 9.0] {
            histogram.observe(value);
        }
        let (sum, count, buckets) = histogram.get();
        assert_eq!(count, 5);
        assert!((sum - 16.0).abs() < 1e-9, "{sum}");
        assert_eq!(buckets, vec![(1.0, 2), (2.0, 3), (5.0, 4), (f64::MAX, 5)]);
    }

    #[test]
    fn a_counter_adds_up_its_shards_and_is_exposed_as_a_counter() {
        let counter = Counter::default();
        counter.inc();
        counter.inc_by(4);
        std::thread::scope(|scope| {
            scope.spawn(|| counter.inc_by(10));
        });
        assert_eq!(counter.get(), 15);
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("done", "How many", counter.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(text.contains("# TYPE done counter"), "{text}");
        assert!(text.contains("done_total 15"), "{text}");
    }

    #[test]
    fn the_exposition_is_a_prometheus_histogram() {
        let mut registry = prometheus_client::registry::Registry::default();
        let histogram = Histogram::latency();
        registry.register("wait", "How long", histogram.clone());
        histogram.observe(0.003);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(text.contains("# TYPE wait histogram"), "{text}");
        assert!(text.contains("wait_bucket{le=\"0.004\"} 1"), "{text}");
        assert!(text.contains("wait_bucket{le=\"+Inf\"} 1"), "{text}");
        assert!(text.contains("wait_count 1"), "{text}");
    }
}
