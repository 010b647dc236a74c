//! The threads that serve client connections: one single-threaded tokio runtime per worker,
//! each connection on one worker for its whole life.
//!
//! Why not tokio's multi-thread scheduler: a request there wakes tasks across threads at
//! every step (the connection, the flight's fetch task, the pooled upstream connection's
//! task), and the wake-ups, futex calls and context switches cost more than all of the
//! proxy's own code (a pass-through took 45 µs of CPU on 2 threads, 23 µs on one). Here a
//! connection, the flights its requests lead and the upstream connections they use all run
//! on the same thread, as nginx's workers do; only a follower on another worker is woken
//! across threads. The accept loops stay on the main runtime and hand each new connection to
//! the next worker in turn.
//!
//! This module owns the threads and which worker a task runs on; what a connection does is
//! `server`'s business. It sits at the bottom of the layers because state kept per worker
//! (the upstream connection pools) needs to know which worker it is on.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// This thread's worker index; 0 on every other thread.
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The index of the worker running the caller (0 outside the workers), for state kept per
/// worker, such as the upstream connection pools (`upstream`).
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// The worker threads. Dropping this stops them; tasks still running on them are dropped.
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Each worker runs until its sender is dropped.
    _stop: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `count` worker threads (at least one).
    pub fn start(count: usize) -> io::Result<Workers> {
        let count = count.max(1);
        let mut handles = Vec::with_capacity(count);
        let mut stops = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            std::thread::Builder::new()
                .name(format!("worker-{index}"))
                .spawn(move || {
                    INDEX.with(|cell| cell.set(index));
                    let _ = runtime.block_on(stopped);
                })?;
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
            _stop: stops,
        })
    }

    /// Runs the future `make()` returns on the next worker in turn. `make` runs on that
    /// worker, so what it creates (a socket registered with the worker's reactor, above all)
    /// belongs to the worker.
    pub fn spawn<F, Fut>(&self, make: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        // Not `async move { make().await }`: that would keep `make`'s captures beside the
        // future it made, for as long as the task lives; flattened, the one replaces the
        // other (every connection's task is this).
        let made = futures_util::future::lazy(|_| make());
        self.handles[index].spawn(futures_util::FutureExt::flatten(made));
    }
}
