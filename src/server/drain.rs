//! How the server tells its open connections to finish, and counts them until they have.
//!
//! The server announces a [`Phase`]; every connection holds an [`Open`] for as long as it
//! lives, which counts it and lets it read the phase and wait for the next announcement. A
//! `tokio::sync::watch` channel did both before, but waiting on one needs its `changed()`
//! future, which borrows the receiver: a connection's task had to keep a `select!` over it
//! beside hyper's connection (216 bytes with the receiver, in every connection, idle or
//! waiting in a herd). Here the wait is an [`OwnedNotified`] stored in the connection's own
//! future (`connection::UntilDrained`).

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

/// What the server asks of its open connections, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    Serving,
    /// Finish what is in progress, take nothing new.
    Draining,
    /// The grace ran out: stop now.
    Cut,
}

impl Phase {
    fn from_u8(value: u8) -> Phase {
        match value {
            0 => Phase::Serving,
            1 => Phase::Draining,
            _ => Phase::Cut,
        }
    }
}

/// The server's side: announces phases and waits for the connections to end.
#[derive(Clone)]
pub(crate) struct Drain {
    shared: Arc<Shared>,
}

/// One open connection's side: counted until dropped.
#[derive(Debug)]
pub(crate) struct Open {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    phase: AtomicU8,
    /// Woken on every announcement (after `phase` is stored).
    announced: Arc<Notify>,
    open: AtomicUsize,
    /// Woken when the last connection is gone.
    all_gone: Notify,
}

impl Drain {
    pub(crate) fn new() -> Drain {
        Drain {
            shared: Arc::new(Shared {
                phase: AtomicU8::new(Phase::Serving as u8),
                announced: Arc::new(Notify::new()),
                open: AtomicUsize::new(0),
                all_gone: Notify::new(),
            }),
        }
    }

    /// A new connection's part, counted from now until it is dropped.
    pub(crate) fn open(&self) -> Open {
        self.shared.open.fetch_add(1, Ordering::AcqRel);
        Open {
            shared: self.shared.clone(),
        }
    }

    /// Tells every open connection (and every one opened after) that the server is in `phase`.
    pub(crate) fn announce(&self, phase: Phase) {
        self.shared.phase.store(phase as u8, Ordering::Release);
        self.shared.announced.notify_waiters();
    }

    /// How many connections are open.
    pub(crate) fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::Acquire)
    }

    /// Resolves once no connection is open.
    pub(crate) async fn all_gone(&self) {
        loop {
            let gone = self.shared.all_gone.notified();
            tokio::pin!(gone);
            // Registered before the count is read: the last drop's wake-up cannot fall between.
            gone.as_mut().enable();
            if self.open_connections() == 0 {
                return;
            }
            gone.await;
        }
    }
}

impl Open {
    /// The phase announced last.
    pub(crate) fn phase(&self) -> Phase {
        Phase::from_u8(self.shared.phase.load(Ordering::Acquire))
    }

    /// A future that resolves at the next announcement. Read [`Open::phase`] after making it:
    /// an announcement after that is not missed (tokio's `notify_waiters` wakes every
    /// `Notified` made before it, polled or not).
    pub(crate) fn next_announcement(&self) -> OwnedNotified {
        self.shared.announced.clone().notified_owned()
    }

    /// Resolves once the server has announced `phase` or a later one.
    pub(crate) async fn reached(&self, phase: Phase) {
        loop {
            let next = self.next_announcement();
            if self.phase() >= phase {
                return;
            }
            next.await;
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if self.shared.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.all_gone.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_opened_after_an_announcement_sees_it_and_the_last_drop_ends_the_wait() {
        let drain = Drain::new();
        let first = drain.open();
        drain.announce(Phase::Draining);
        let second = drain.open();
        assert_eq!(second.phase(), Phase::Draining);
        second.reached(Phase::Draining).await;
        assert_eq!(drain.open_connections(), 2);
        let waiting = tokio::spawn(async move {
            drain.all_gone().await;
            drain.open_connections()
        });
        drop(first);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(second);
        assert_eq!(waiting.await.unwrap(), 0);
    }

    #[tokio::test]
    async fn an_announcement_wakes_a_wait_made_before_it_even_unpolled() {
        let drain = Drain::new();
        let open = drain.open();
        let next = open.next_announcement();
        assert_eq!(open.phase(), Phase::Serving);
        drain.announce(Phase::Cut);
        next.await;
        assert_eq!(open.phase(), Phase::Cut);
    }
}
