//! The holder's side: a key's lease in Redis, kept alive while this proxy fetches, and ended
//! with the flight's verdict for every waiting proxy (its response, or a release).
//!
//! A lease that is never ended (its flight dropped, the process killed) ends by itself: a
//! dropped [`Lease`] releases its waiters at once, and a dead process stops renewing it, so
//! after `lease` one waiter takes it over.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use http::HeaderMap;
use redis::Script;
use tokio::sync::oneshot;

use super::entry::{Entry, SharedResponse, Verdict};
use super::link::Link;
use super::Names;

/// Writes the verdict, gives the lease up if it is still this flight's, and tells the
/// waiters, in one step (a waiter that reads the verdict after the message still finds it).
/// KEYS: result, lease; ARGV: value, its time to live in ms, token, channel.
static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
redis.call('PUBLISH', ARGV[4], ARGV[3])
return 1",
    )
});

/// Extends the lease if it is still this flight's. KEYS: lease; ARGV: token, ms.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0",
    )
});

/// Gives up a lease nobody will fetch for, and wakes the waiters to take it. KEYS: lease;
/// ARGV: token, channel.
static ABANDON: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[1])
end
return 1",
    )
});

/// Armed while a flight asks for a lease: if the flight is dropped before it knows the
/// answer (its clients all left), a lease it may have been given is handed back at once,
/// rather than left for the waiters to wait out.
pub(super) struct Asking<'a> {
    pub(super) link: &'a Arc<Link>,
    pub(super) names: &'a Arc<Names>,
    pub(super) token: &'a str,
    pub(super) answered: bool,
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let (names, token) = (self.names.clone(), self.token.to_owned());
        self.link.send(move |mut connection| async move {
            ABANDON
                .key(&names.lease)
                .arg(&token)
                .arg(&names.channel)
                .invoke_async::<()>(&mut connection)
                .await
        });
    }
}

/// This proxy's lease on a key: it fetches for the fleet.
pub struct Lease {
    pub(super) link: Arc<Link>,
    pub(super) names: Arc<Names>,
    pub(super) token: String,
    pub(super) lease: Duration,
    /// What the recorder needs to write the response: the key, the request's fields (its
    /// `Vary` values), how long to keep it.
    pub(super) context: Arc<super::Ask>,
    settled: bool,
    /// Dropped with the lease: the renewal stops.
    _renewing: oneshot::Sender<()>,
}

impl Lease {
    pub(super) fn start(
        link: Arc<Link>,
        names: Arc<Names>,
        token: String,
        lease: Duration,
        context: Arc<super::Ask>,
    ) -> Lease {
        let (renewing, stopped) = oneshot::channel();
        link.spawn(renew(
            link.clone(),
            names.clone(),
            token.clone(),
            lease,
            stopped,
        ));
        Lease {
            link,
            names,
            token,
            lease,
            context,
            settled: false,
            _renewing: renewing,
        }
    }

    /// Tells the waiters to fetch for themselves, now.
    pub fn release(mut self) {
        self.settle(Verdict::Release, self.lease);
    }

    /// Hands `response` to the waiters, and keeps it in Redis for `keep` (at least as long as
    /// a waiter may take to read it).
    pub fn share(mut self, response: SharedResponse, keep: Duration) {
        self.settle(Verdict::Response(Box::new(response)), keep.max(self.lease));
    }

    fn settle(&mut self, verdict: Verdict, keep: Duration) {
        self.settled = true;
        let value = Entry {
            token: self.token.as_bytes().to_vec(),
            verdict,
        }
        .encode();
        let names = self.names.clone();
        let token = self.token.clone();
        self.link.send(move |mut connection| async move {
            FINISH
                .key(&names.result)
                .key(&names.lease)
                .arg(value)
                .arg(keep.as_millis().max(1) as u64)
                .arg(&token)
                .arg(&names.channel)
                .invoke_async::<()>(&mut connection)
                .await
        });
    }

    /// The request's fields (for the response's `Vary` values).
    pub(super) fn request_headers(&self) -> &HeaderMap {
        &self.context.headers
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.settled {
            self.settle(Verdict::Release, self.lease);
        }
    }
}

/// Keeps the lease alive at half its length while the flight runs: a slow origin is not a
/// dead holder. Ends when the lease is dropped, or when it is no longer this flight's.
async fn renew(
    link: Arc<Link>,
    names: Arc<Names>,
    token: String,
    lease: Duration,
    mut stopped: oneshot::Receiver<()>,
) {
    let every = lease / 2;
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            () = tokio::time::sleep(every) => {}
        }
        let renewed = link
            .run(|mut connection| {
                let (names, token) = (names.clone(), token.clone());
                async move {
                    RENEW
                        .key(&names.lease)
                        .arg(&token)
                        .arg(lease.as_millis() as u64)
                        .invoke_async::<i64>(&mut connection)
                        .await
                }
            })
            .await;
        if !matches!(renewed, Ok(1)) {
            return;
        }
    }
}
