//! Unit tests of the flight's bookkeeping: joining, trimming, cutting off, cancelling.

use super::*;
use crate::coalesce::BufferBudget;
use crate::config::Config;
use crate::sharing::{KeyParts, KeyPolicy};

/// A flight on a route that takes at most two followers.
fn flight() -> Flight {
    let config = Config::from_toml(
        "[upstreams.a]\nurl = \"http://127.0.0.1:1\"\n[[routes]]\npath_prefix = \"/\"\nupstream = \"a\"\ncoalesce = { max_followers = 2 }\n",
    )
    .expect("fixed config");
    let policy = KeyPolicy {
        route: 1,
        headers: Vec::new(),
        host: true,
    };
    let key = policy.flight_key(&KeyParts {
        method: &http::Method::GET,
        authority: None,
        path_and_query: "/",
        headers: &HeaderMap::new(),
        trailers: false,
        body: &[],
        validators: None,
    });
    let scope = Scope {
        route: "0".into(),
        policy: Arc::new(config.routes[0].coalesce.clone()),
    };
    let budget = Arc::new(BufferBudget::new(u64::MAX));
    Flight::new(1, key, scope, HeaderMap::new(), budget)
}

#[test]
fn only_an_open_unfinished_flight_with_room_takes_joiners() {
    let full = flight();
    assert_eq!(full.try_join(), Some(1));
    assert_eq!(full.try_join(), Some(2));
    assert_eq!(full.try_join(), None, "max_followers");
    assert_eq!(full.followers(), 2);
    // Closed (past max_replay_body, or not shareable) but still running: between closing
    // and leaving the table, a joiner must not get in, or it would read from chunk 0 of a
    // log already trimmed.
    let closed = flight();
    closed.lock().open = false;
    assert_eq!(closed.try_join(), None);
    let ended = flight();
    ended.lock().end = Some(Ok(()));
    assert_eq!(ended.try_join(), None);
}

/// A closed flight's state holding chunks of `sizes`, with readers at `cursors`.
fn state(sizes: &[usize], cursors: &[usize]) -> FlightState {
    let chunks: VecDeque<Bytes> = sizes.iter().map(|&n| Bytes::from(vec![0u8; n])).collect();
    let buffered = sizes.iter().sum::<usize>() as u64;
    FlightState {
        head: None,
        leaders_fields: None,
        chunks,
        first_chunk: 0,
        body_bytes: buffered,
        buffered,
        budget: {
            let budget = BufferBudget::new(u64::MAX);
            budget.hold(buffered);
            Arc::new(budget)
        },
        peak_buffered: buffered,
        trailers: None,
        end: None,
        readers: cursors
            .iter()
            .enumerate()
            .map(|(id, &cursor)| (cursor, id as u64))
            .collect(),
        next_reader: cursors.len() as u64,
        followers: cursors.len().saturating_sub(1),
        followers_reported: 0,
        cut_off: 0,
        open: false,
        fetch_waiting: false,
        fetch: driver::Fetch::NotStarted { task: false },
        leader_waker: None,
        waiting: Vec::new(),
        spare: Vec::new(),
    }
}

#[test]
fn trim_drops_exactly_what_every_reader_has_read_and_keeps_the_count() {
    let mut s = state(&[10, 20, 30, 40], &[2, 3]);
    s.trim();
    assert_eq!(s.first_chunk, 2);
    assert_eq!(s.chunks.len(), 2);
    assert_eq!(s.buffered, 70, "the bytes still held");
    // Open to joiners, nothing may go: a late joiner starts at chunk 0.
    let mut open = state(&[10, 20], &[2]);
    open.open = true;
    open.trim();
    assert_eq!((open.first_chunk, open.buffered), (0, 30));
}

#[test]
fn cutting_the_slowest_removes_every_reader_at_that_cursor_and_frees_their_chunks() {
    let mut s = state(&[10, 20, 30], &[0, 0, 2]);
    assert_eq!(s.cut_slowest(), 2);
    assert_eq!(s.cut_off, 2);
    assert_eq!(s.readers.len(), 1);
    assert_eq!((s.first_chunk, s.buffered), (2, 30));
    // The last reader gone while the fetch runs: the fetch is cancelled.
    assert_eq!(s.cut_slowest(), 1);
    assert!(s.cancel_if_abandoned().is_some());
    assert!(matches!(s.end, Some(Err(FlightError::Cancelled))));
    assert!(s.cancel_if_abandoned().is_none(), "only once");
}
