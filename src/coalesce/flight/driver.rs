//! Who runs a flight's fetch. While nobody but the leader reads, the leader runs it itself,
//! polling it from its own waits (`wait`): a GET that nobody joins costs no task, no spawn and
//! no wake-up from one task to another. The moment anyone else needs it (a follower joins), the
//! fetch moves onto a task of its own on the leader's worker, so that the leader's client
//! reading slowly, or leaving, no longer decides how fast the others get their bytes: the fetch
//! belongs to the flight, not to the leader.
//!
//! The fetch is one boxed future (the `coalesce::fetch` driver: the upstream request, the head,
//! the body into the log, the end), so that moving it costs a pointer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;

use tokio::runtime::Handle;
use tokio::task::AbortHandle;

use super::Flight;

/// A flight's fetch, from the upstream request to its end (it publishes into the flight).
pub(in crate::coalesce) type FetchFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where a flight's fetch is.
pub(super) enum Fetch {
    /// Between the flight's creation and its leader starting the fetch; `task` is set when a
    /// follower joined in between.
    NotStarted { task: bool },
    /// Run by the leader's own polls; `runtime` is the leader's worker, where it moves if it
    /// must run on its own.
    Inline {
        future: FetchFuture,
        runtime: Handle,
    },
    /// Being polled by the leader right now (it holds the future); `task` asks it to hand the
    /// fetch to a task when the poll returns.
    Polling { task: bool },
    /// On a task of its own.
    Spawned(AbortHandle),
    /// Finished, or stopped.
    Done,
}

impl std::fmt::Debug for Fetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fetch::NotStarted { .. } => "NotStarted",
            Fetch::Inline { .. } => "Inline",
            Fetch::Polling { .. } => "Polling",
            Fetch::Spawned(_) => "Spawned",
            Fetch::Done => "Done",
        })
    }
}

impl Fetch {
    /// Someone besides the leader needs the fetch (a follower joined): it must run on a
    /// task of its own, now if it is waiting inline, else as soon as it can.
    pub(super) fn needs_task(&mut self) {
        match self {
            Fetch::NotStarted { task } | Fetch::Polling { task } => *task = true,
            Fetch::Inline { .. } => {
                let Fetch::Inline { future, runtime } = std::mem::replace(self, Fetch::Done) else {
                    return;
                };
                *self = Fetch::Spawned(runtime.spawn(future).abort_handle());
            }
            Fetch::Spawned(_) | Fetch::Done => {}
        }
    }

    /// Whether the leader is polling the fetch at this moment.
    pub(super) fn is_being_polled(&self) -> bool {
        matches!(self, Fetch::Polling { .. })
    }

    /// Stops the fetch (every client left): aborts its task, or hands back an inline fetch to
    /// be dropped outside the flight's lock. A fetch being polled is dropped by its poller,
    /// which sees the flight ended.
    pub(super) fn stop(&mut self) -> Option<FetchFuture> {
        match std::mem::replace(self, Fetch::Done) {
            Fetch::Inline { future, .. } => Some(future),
            Fetch::Spawned(task) => {
                task.abort();
                None
            }
            polling @ Fetch::Polling { .. } => {
                *self = polling;
                None
            }
            Fetch::NotStarted { .. } | Fetch::Done => None,
        }
    }
}

impl Flight {
    /// The leader starts the fetch: inline, unless a follower joined already.
    pub(in crate::coalesce) fn start_fetch(&self, future: FetchFuture) {
        let runtime = Handle::current();
        let mut state = self.lock();
        let ended = state.end.is_some();
        state.fetch = match std::mem::replace(&mut state.fetch, Fetch::Done) {
            _ if ended => Fetch::Done,
            Fetch::NotStarted { task: true } => {
                Fetch::Spawned(runtime.spawn(future).abort_handle())
            }
            _ => Fetch::Inline { future, runtime },
        };
    }

    /// Polls an inline fetch on the leader's behalf, with the leader's context (the fetch's
    /// wakers are then the leader's). Hands the fetch to a task when the poll returns if a
    /// follower asked for it meanwhile, and drops it if it finished or the flight ended.
    pub(super) fn poll_inline_fetch(self: &Arc<Self>, cx: &mut Context<'_>) {
        let mut future = {
            let mut state = self.lock();
            if !matches!(state.fetch, Fetch::Inline { .. }) {
                return;
            }
            let Fetch::Inline { future, runtime } =
                std::mem::replace(&mut state.fetch, Fetch::Polling { task: false })
            else {
                return;
            };
            (future, runtime)
        };
        let finished = future.0.as_mut().poll(cx).is_ready();
        let mut state = self.lock();
        let ended = state.end.is_some();
        let task = matches!(state.fetch, Fetch::Polling { task: true });
        let (future, runtime) = future;
        state.fetch = if finished {
            Fetch::Done
        } else if ended {
            // Cancelled (every reader left, or cut) while it ran: dropped outside the lock.
            state.fetch = Fetch::Done;
            drop(state);
            drop(future);
            return;
        } else if task {
            Fetch::Spawned(runtime.spawn(future).abort_handle())
        } else {
            Fetch::Inline { future, runtime }
        };
    }
}
