//! One route's connection to its Redis: the commands the fleet layer sends, each under the
//! route's `timeout`, the channels waiters listen on, and whether Redis is usable now.
//!
//! The connection is redis-rs's `ConnectionManager` over RESP3, so one socket carries both
//! commands and pub/sub messages and is re-made (and resubscribed) after a failure. It lives
//! on a runtime of its own (one thread for every fleet route of the process): the workers
//! only hand it commands, so a reconnect never runs on, or waits for, a worker busy with
//! clients, and a worker's runtime going away never takes the connection with it.
//!
//! Failure is remembered, not retried per request: the first command that fails (or takes
//! longer than `timeout`), whether a flight waits on it or not, marks Redis down for `retry`,
//! logs it once and counts it in `fleet_redis_down`, and every flight in that window goes
//! upstream without asking Redis. The first flight after it whose commands succeed logs that
//! Redis is back.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{PushInfo, PushKind, RedisError, Value};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::config::FleetConfig;

/// Why a Redis command gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Redis(#[from] RedisError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the fleet runtime is gone")]
    Gone,
}

/// Waiters by channel: each is told (with `()`) when a message arrives on it, or when the
/// connection drops (then its next command says what happened).
type Listeners = Arc<Mutex<HashMap<Vec<u8>, Vec<(u64, mpsc::UnboundedSender<()>)>>>>;

/// A channel to subscribe to (true) or leave, and who waits for Redis's answer.
type Subscription = (Vec<u8>, bool, oneshot::Sender<Result<(), LinkError>>);

pub struct Link {
    connection: ConnectionManager,
    runtime: Handle,
    timeout: Duration,
    retry: Duration,
    /// `redis://host:port` without credentials, for log lines.
    pub(super) label: String,
    /// Until when Redis counts as down; `None` while it answers.
    down_until: Mutex<Option<Instant>>,
    /// `fleet_redis_down`: counts this link while it is down.
    down: Gauge,
    listeners: Listeners,
    /// SUBSCRIBE and UNSUBSCRIBE in the order the listeners came and went, run by one task.
    subscriptions: mpsc::UnboundedSender<Subscription>,
}

/// The thread every fleet connection runs on, started by the first.
fn fleet_runtime() -> Handle {
    static RUNTIME: OnceLock<Handle> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name("coalesce-fleet")
                .build()
                .expect("the fleet runtime starts");
            let handle = runtime.handle().clone();
            std::thread::Builder::new()
                .name("coalesce-fleet".into())
                .spawn(move || runtime.block_on(std::future::pending::<()>()))
                .expect("the fleet thread starts");
            handle
        })
        .clone()
}

impl Link {
    /// A connection to `config.redis`, made on first use: a Redis that is down at start
    /// costs nothing until a flight asks it.
    pub fn new(config: &FleetConfig, down: Gauge) -> Result<Link, RedisError> {
        let runtime = fleet_runtime();
        let _inside = runtime.enter();
        let listeners: Listeners = Arc::default();
        let info = redis::Client::open(config.redis.as_str())?
            .get_connection_info()
            .clone();
        let label = format!("redis://{}", info.addr());
        // RESP3: pushed pub/sub messages arrive on the command connection.
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(settings))?;
        let push = {
            let listeners = listeners.clone();
            move |push: PushInfo| -> Result<(), std::convert::Infallible> {
                dispatch(&listeners, push);
                Ok(())
            }
        };
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_push_sender(push)
            .set_automatic_resubscription();
        let connection = ConnectionManager::new_lazy_with_config(client, manager)?;
        let (subscriptions, ordered) = mpsc::unbounded_channel();
        runtime.spawn(run_subscriptions(
            connection.clone(),
            ordered,
            config.timeout,
        ));
        Ok(Link {
            connection,
            runtime: runtime.clone(),
            timeout: config.timeout,
            retry: config.retry,
            label,
            down_until: Mutex::new(None),
            down,
            listeners,
            subscriptions,
        })
    }

    /// Whether to ask Redis now: it answers, or it failed more than `retry` ago.
    pub fn usable(&self) -> bool {
        let down_until = self
            .down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        down_until.is_none_or(|until| Instant::now() >= until)
    }

    /// Marks Redis down for `retry` after `err`. The first failure while it was up is said
    /// once: a warning, and `fleet_redis_down` counts this route's Redis.
    pub fn failed(&self, err: &LinkError) {
        let mut down_until = self
            .down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let was_up = down_until.replace(Instant::now() + self.retry).is_none();
        drop(down_until);
        if was_up {
            self.down.inc();
            tracing::warn!(redis = %self.label, error = %err, retry = ?self.retry, "fleet: Redis failed; falling back to local coalescing");
        }
    }

    /// Marks Redis up; when it was down, says so once.
    pub fn answered(&self) {
        let mut down_until = self
            .down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if down_until.take().is_some() {
            drop(down_until);
            self.down.dec();
            tracing::info!(redis = %self.label, "fleet: Redis answers again");
        }
    }

    /// Runs `command` on the fleet runtime with the connection, under the route's timeout.
    pub async fn run<T, F, Fut>(&self, command: F) -> Result<T, LinkError>
    where
        T: Send + 'static,
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>> + Send + 'static,
    {
        let timeout = self.timeout;
        let work = command(self.connection.clone());
        let task = self
            .runtime
            .spawn(async move { tokio::time::timeout(timeout, work).await });
        match task.await {
            Ok(Ok(answer)) => Ok(answer?),
            Ok(Err(_)) => Err(LinkError::Timeout(timeout)),
            Err(_) => Err(LinkError::Gone),
        }
    }

    /// Sends `command` without waiting for its answer (a holder's verdict, written as its
    /// flight ends: nobody local waits for it). A failure marks Redis down.
    pub fn send<F, Fut>(self: &Arc<Self>, command: F)
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<(), RedisError>> + Send + 'static,
    {
        let work = command(self.connection.clone());
        let link = self.clone();
        self.runtime.spawn(async move {
            match tokio::time::timeout(link.timeout, work).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => link.failed(&LinkError::Redis(err)),
                Err(_) => link.failed(&LinkError::Timeout(link.timeout)),
            }
        });
    }

    /// Runs `task` on the fleet runtime.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.runtime.spawn(task);
    }

    /// Starts listening on `channel`; the listener is subscribed once this returns.
    pub async fn listen(self: &Arc<Self>, channel: &str) -> Result<Listener, LinkError> {
        static NEXT_LISTENER: AtomicU64 = AtomicU64::new(0);
        let id = NEXT_LISTENER.fetch_add(1, Ordering::Relaxed);
        let channel = channel.as_bytes().to_vec();
        let (tell, told) = mpsc::unbounded_channel();
        let first = {
            let mut listeners = self
                .listeners
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let list = listeners.entry(channel.clone()).or_default();
            list.push((id, tell));
            list.len() == 1
        };
        let listener = Listener {
            link: self.clone(),
            channel: channel.clone(),
            id,
            told,
        };
        if first {
            let (done, subscribed) = oneshot::channel();
            self.subscriptions
                .send((channel, true, done))
                .map_err(|_| LinkError::Gone)?;
            subscribed.await.map_err(|_| LinkError::Gone)??;
        }
        Ok(listener)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // A route a reload replaced while its Redis was down no longer counts as down.
        let down_until = self
            .down_until
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if down_until.is_some() {
            self.down.dec();
        }
    }
}

/// A waiter's ear on one channel; dropping it stops listening (UNSUBSCRIBE after the last).
pub struct Listener {
    link: Arc<Link>,
    channel: Vec<u8>,
    id: u64,
    told: mpsc::UnboundedReceiver<()>,
}

impl Listener {
    /// Waits for the next message on the channel (or a dropped connection); `false` when
    /// the link has gone.
    pub async fn next(&mut self) -> bool {
        self.told.recv().await.is_some()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let mut listeners = self
            .link
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(list) = listeners.get_mut(&self.channel) else {
            return;
        };
        list.retain(|(id, _)| *id != self.id);
        if list.is_empty() {
            listeners.remove(&self.channel);
            let (done, _) = oneshot::channel();
            let _ = self
                .link
                .subscriptions
                .send((std::mem::take(&mut self.channel), false, done));
        }
    }
}

/// Hands a pushed message to the listeners of its channel; a dropped connection to every
/// listener, whose next command then fails and falls back.
fn dispatch(listeners: &Listeners, push: PushInfo) {
    let listeners = listeners.lock().unwrap_or_else(PoisonError::into_inner);
    match push.kind {
        PushKind::Message => {
            let channel = match push.data.first() {
                Some(Value::BulkString(name)) => name.as_slice(),
                Some(Value::SimpleString(name)) => name.as_bytes(),
                _ => return,
            };
            for (_, tell) in listeners.get(channel).into_iter().flatten() {
                let _ = tell.send(());
            }
        }
        PushKind::Disconnection => {
            for (_, tell) in listeners.values().flatten() {
                let _ = tell.send(());
            }
        }
        _ => {}
    }
}

/// Runs SUBSCRIBE and UNSUBSCRIBE one at a time, in the order asked: a channel's last
/// listener leaving and a new first one arriving must reach Redis in that order.
async fn run_subscriptions(
    mut connection: ConnectionManager,
    mut ordered: mpsc::UnboundedReceiver<Subscription>,
    timeout: Duration,
) {
    while let Some((channel, subscribe, done)) = ordered.recv().await {
        let work = async {
            if subscribe {
                connection.subscribe(&channel).await
            } else {
                connection.unsubscribe(&channel).await
            }
        };
        let answer = match tokio::time::timeout(timeout, work).await {
            Ok(answer) => answer.map_err(LinkError::from),
            Err(_) => Err(LinkError::Timeout(timeout)),
        };
        let _ = done.send(answer);
    }
}
