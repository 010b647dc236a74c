//! Keys recently found not shareable ("hit-for-pass" in Varnish's words).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::Key;

/// Above this many remembered keys, expired ones are swept on insert; if that is not enough
/// the new key is not remembered (it will simply queue once more). Keeps a flood of unique
/// private URLs from growing memory without bound.
const MAX_REMEMBERED: usize = 100_000;

/// Keys whose last response was not shareable, each until its `pass_ttl` runs out. Requests
/// for them go straight upstream instead of queueing behind a leader whose response they will
/// not be given.
#[derive(Debug, Default)]
pub struct PassMemory {
    /// Key → when to forget it. A std mutex: held for one map operation, never across await.
    until: Mutex<HashMap<Key, Instant>>,
}

impl PassMemory {
    fn map(&self) -> MutexGuard<'_, HashMap<Key, Instant>> {
        self.until.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn remember(&self, key: Key, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut map = self.map();
        if map.len() >= MAX_REMEMBERED {
            map.retain(|_, until| *until > now);
            if map.len() >= MAX_REMEMBERED {
                return;
            }
        }
        map.insert(key, now + ttl);
    }

    /// Whether requests for `key` should go straight upstream now.
    pub fn should_pass(&self, key: &Key) -> bool {
        let mut map = self.map();
        match map.get(key) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                map.remove(key);
                false
            }
            None => false,
        }
    }

    /// A shareable response for `key` arrived: stop passing it.
    pub fn forget(&self, key: &Key) {
        let mut map = self.map();
        if !map.is_empty() {
            map.remove(key);
        }
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
