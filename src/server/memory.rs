//! Giving freed response memory back to the system. Flight buffers are many large chunks;
//! glibc's allocator keeps what they free in its arenas (its mmap threshold rises after the
//! first large frees, so later chunks come from the arenas too), and RSS stays at its peak
//! long after the clients that caused it are gone: 196 MiB a minute after a burst of
//! non-reading clients had filled a 256 MiB budget (`bench/slow-readers.sh`). Every few
//! seconds, when the bytes flights hold have fallen well below their high-water mark since
//! the last look, `malloc_trim` hands the free pages back. It walks the arenas under their
//! locks, so it runs only after such a fall, not on a timer alone.

use std::sync::Arc;
use std::time::Duration;

use crate::coalesce::BufferBudget;

/// How often the budget is looked at.
const EVERY: Duration = Duration::from_secs(5);

/// How far below its high-water mark the held bytes must fall for a trim to be worth it.
const WORTH_TRIMMING: u64 = 16 << 20;

/// Runs until the process ends.
pub(super) async fn release_freed_memory(budget: Arc<BufferBudget>) {
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut high_water = 0;
    loop {
        ticks.tick().await;
        let used = budget.used();
        high_water = high_water.max(used);
        if high_water - used >= WORTH_TRIMMING {
            trim();
            high_water = used;
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim only reads and updates the allocator's own state, under its locks.
    let released = unsafe { libc::malloc_trim(0) };
    tracing::debug!(
        released = released != 0,
        "returned freed memory to the system"
    );
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
