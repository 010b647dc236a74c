//! Upstream failures in the log, as an operator can read them during an outage: the first
//! failure of a kind on a route is logged at once; the same kind on the same route within the
//! next 10 s is only counted, and the next line logged after that says how many were held
//! back. A backend that is down for a minute under a herd of distinct keys gives a handful of
//! lines, not one per flight. Metrics and the stats line still count every failure exactly.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long repeats of one failure are counted rather than logged.
const QUIET: Duration = Duration::from_secs(10);

/// When the last line for a (route, kind) was logged, and how many have been held back since.
#[derive(Debug)]
struct Window {
    logged: Instant,
    held_back: u64,
}

static WINDOWS: LazyLock<Mutex<HashMap<(String, &'static str), Window>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Whether this failure should be logged now, and how many like it were held back before
/// it; `None` when it is to be held back itself.
pub fn admit(route: &str, kind: &'static str) -> Option<u64> {
    admit_at(
        &mut WINDOWS.lock().unwrap_or_else(PoisonError::into_inner),
        route,
        kind,
        Instant::now(),
    )
}

fn admit_at(
    windows: &mut HashMap<(String, &'static str), Window>,
    route: &str,
    kind: &'static str,
    now: Instant,
) -> Option<u64> {
    match windows.get_mut(&(route.to_owned(), kind)) {
        Some(window) if now.duration_since(window.logged) < QUIET => {
            window.held_back += 1;
            None
        }
        Some(window) => {
            let held_back = std::mem::take(&mut window.held_back);
            window.logged = now;
            Some(held_back)
        }
        None => {
            windows.insert(
                (route.to_owned(), kind),
                Window {
                    logged: now,
                    held_back: 0,
                },
            );
            Some(0)
        }
    }
}

/// Logs an upstream failure on `route`, unless one like it was logged within 10 s.
pub fn upstream_failed(route: &str, kind: &'static str, error: &dyn std::fmt::Display, what: &str) {
    if let Some(held_back) = admit(route, kind) {
        tracing::warn!(
            route,
            kind,
            error = %error,
            repeats_not_logged = held_back,
            "{what}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_within_ten_seconds_are_counted_and_reported_with_the_next_line() {
        let mut windows = HashMap::new();
        let start = Instant::now();
        assert_eq!(admit_at(&mut windows, "api", "connect", start), Some(0));
        for i in 1..=30 {
            let at = start + Duration::from_millis(300 * i);
            assert_eq!(admit_at(&mut windows, "api", "connect", at), None);
        }
        // Another kind, or another route, is its own window.
        assert_eq!(
            admit_at(&mut windows, "api", "response_timeout", start),
            Some(0)
        );
        assert_eq!(admit_at(&mut windows, "web", "connect", start), Some(0));
        let later = start + QUIET + Duration::from_millis(1);
        assert_eq!(admit_at(&mut windows, "api", "connect", later), Some(30));
        assert_eq!(admit_at(&mut windows, "api", "connect", later), None);
    }
}
