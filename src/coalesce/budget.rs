//! The memory every flight together holds for clients that have not read it yet.
//! `max_flight_buffer` bounds one flight; this bounds their sum (`[server]
//! max_buffered_bytes`), so that many clients that stop reading, each on a large response of
//! its own, cannot add up to an out-of-memory kill. A flight counts every body chunk it holds,
//! from the moment it publishes it until the last reader has it (or the flight ends); when the
//! sum is at the limit, a flight that holds unread bytes stops reading upstream until its own
//! readers drain it, and its readers that free nothing for `client_stall_timeout` are cut off
//! as when its own buffer is full (`Flight::make_room`). A flight whose readers keep up always
//! has room for its next chunk, so they lose nothing but read-ahead.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::gauge::Gauge;

use crate::observe::metrics::Metrics;

/// The limit and what is held against it, shared by every flight of the process.
#[derive(Debug)]
pub struct BufferBudget {
    limit: AtomicU64,
    used: AtomicU64,
    /// Fetches waiting for room right now (their flight's buffer or this budget full).
    waiting: AtomicU64,
    /// `used` and `waiting` as metrics.
    used_gauge: Gauge,
    waiting_gauge: Gauge,
}

impl BufferBudget {
    /// A budget whose figures are not exported (tests).
    pub fn new(limit: u64) -> BufferBudget {
        BufferBudget {
            limit: AtomicU64::new(limit),
            used: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            used_gauge: Gauge::default(),
            waiting_gauge: Gauge::default(),
        }
    }

    /// A budget exported as `buffered_bytes` and `fetches_waiting_for_room`.
    pub fn exported(limit: u64, metrics: &Metrics) -> BufferBudget {
        BufferBudget {
            used_gauge: metrics.buffered_bytes.clone(),
            waiting_gauge: metrics.fetches_waiting_for_room.clone(),
            ..BufferBudget::new(limit)
        }
    }

    /// A reload's new limit; what is held stays held.
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Bytes held now, by every flight.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Fetches that wait for room right now instead of reading upstream: their clients
    /// read slower than the upstream sends.
    pub fn waiting_fetches(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }

    pub(super) fn fetch_waits(&self, waits: bool) {
        match waits {
            true => {
                self.waiting.fetch_add(1, Ordering::Relaxed);
                self.waiting_gauge.inc();
            }
            false => {
                self.waiting.fetch_sub(1, Ordering::Relaxed);
                self.waiting_gauge.dec();
            }
        }
    }

    /// Whether `incoming` more bytes fit. A soft bound: two flights may both see room for
    /// their next chunk at once, so the sum may pass the limit by a chunk per flight.
    pub(super) fn has_room(&self, incoming: u64) -> bool {
        self.used() + incoming <= self.limit.load(Ordering::Relaxed)
    }

    pub(super) fn hold(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
        self.used_gauge.inc_by(bytes as i64);
    }

    pub(super) fn release(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        self.used.fetch_sub(bytes, Ordering::Relaxed);
        self.used_gauge.dec_by(bytes as i64);
    }
}
