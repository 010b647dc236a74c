//! The server: listeners, connections, graceful shutdown, and the periodic stats task.
//!
//! Each accepted connection speaks HTTP/1.1 or HTTP/2: in the clear, a peek at its first
//! bytes decides which (h2 with prior knowledge); over TLS (`[server] tls`, `tls`), ALPN does.
//! hyper's builder for that protocol serves it. Shutdown stops accepting, asks every connection to finish its in-flight
//! requests, and waits up to `shutdown_grace`.
//! What a request does is `proxy`'s business.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

pub mod admin;
mod connection;
mod drain;
mod listener;
mod memory;
mod stall_guard;
pub mod status;
pub mod tls;

use crate::config::Config;
use crate::observe::stats::Stats;
use crate::observe::stats_line::{PeriodicReport, StatsReporter};
use crate::proxy::Proxy;
use crate::runtime::Workers;
use admin::Readiness;
use connection::ConnectionServer;
use drain::{Drain, Phase};
use listener::{accept_loop, refuse};

/// A proxy bound to its listeners, ready to run.
pub struct Server {
    listeners: Vec<TcpListener>,
    admin: Option<TcpListener>,
    proxy: Arc<Proxy>,
    config: Config,
    readiness: Arc<Readiness>,
    /// What TLS listeners present; a reload replaces it.
    certificate: Option<Arc<tls::ListenerCertificate>>,
    /// The span exporter's task, when `[tracing]` is set: spawned with the others by `run`.
    exporter: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>,
}

/// What outlives `Server::run`'s start: reloading the configuration, and readiness.
#[derive(Clone)]
pub struct ServerHandle {
    proxy: Arc<Proxy>,
    /// Held through a reload, so that two at once cannot mix one file's certificate with
    /// another's routes.
    reloading: Arc<std::sync::Mutex<()>>,
    /// The configuration the server started with: what is bound and set up for good.
    started: Arc<Config>,
    readiness: Arc<Readiness>,
    certificate: Option<Arc<tls::ListenerCertificate>>,
}

impl ServerHandle {
    /// Serves new requests under `config`. Routes, upstreams and policies change at once for
    /// new requests; connections, flights and requests under way are not disturbed. Listen
    /// addresses, the admin address, logging and the stats interval need a restart: the
    /// warnings saying so are logged and returned.
    pub fn reload(&self, config: Config) -> Vec<&'static str> {
        let _reloading = self
            .reloading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut warnings = Vec::new();
        // Against what was bound and set up at start, not the previous file: after a change
        // and its revert, nothing differs from what is served.
        let started = &self.started;
        if started.server.listen != config.server.listen || started.admin != config.admin {
            warnings.push(
                "listen and admin addresses only change on restart; still serving the old ones",
            );
        }
        if started.log.format != config.log.format
            || started.log.level != config.log.level
            || started.log.stats_interval != config.log.stats_interval
        {
            warnings.push("log format, level and stats_interval only change on restart");
        }
        match (&self.certificate, &config.server.tls) {
            (Some(certificate), Some(tls)) => certificate.replace(tls.certified.clone()),
            (None, None) => {}
            _ => warnings.push("turning [server] tls on or off only happens on restart"),
        }
        for warning in &warnings {
            tracing::warn!("{warning}");
        }
        self.proxy.reload(&config);
        tracing::info!(
            routes = config.routes.len(),
            upstreams = config.upstreams.len(),
            "config reloaded"
        );
        warnings
    }

    pub fn is_ready(&self) -> bool {
        self.readiness.is_ready()
    }
}

impl Server {
    /// Binds every `[server] listen` address and the admin address.
    pub async fn bind(config: Config) -> io::Result<Server> {
        let backlog = config.server.backlog;
        let mut listeners = Vec::with_capacity(config.server.listen.len());
        for address in &config.server.listen {
            listeners.push(listener::bind(*address, backlog, "proxy")?);
        }
        let admin = match config.admin {
            Some(address) => Some(listener::bind(address, 1024, "admin")?),
            None => None,
        };
        Ok(Server::with_listeners(listeners, admin, config))
    }

    /// Serves on listeners the caller bound (tests bind `127.0.0.1:0`).
    pub fn with_listeners(
        listeners: Vec<TcpListener>,
        admin: Option<TcpListener>,
        config: Config,
    ) -> Server {
        let stats = Arc::new(Stats::default());
        let exporter = config.tracing.as_ref().map(|tracing| {
            let (tracer, exporter) = crate::observe::trace::Tracer::new(tracing);
            let _ = stats.tracer.set(tracer);
            Box::pin(exporter) as std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
        });
        let proxy = Arc::new(Proxy::new(&config, stats));
        let certificate = config
            .server
            .tls
            .as_ref()
            .map(|tls| Arc::new(tls::ListenerCertificate::new(tls.certified.clone())));
        Server {
            listeners,
            admin,
            proxy,
            config,
            readiness: Arc::new(Readiness::default()),
            certificate,
            exporter,
        }
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            proxy: self.proxy.clone(),
            reloading: Arc::default(),
            started: Arc::new(self.config.clone()),
            readiness: self.readiness.clone(),
            certificate: self.certificate.clone(),
        }
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// Serves until `shutdown` resolves; then, after `drain_delay` of still accepting while
    /// `/readyz` says 503, stops accepting and drains for up to `shutdown_grace`. Says whether
    /// every connection finished.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Shutdown {
        let Server {
            listeners,
            admin,
            proxy,
            config,
            readiness,
            certificate,
            exporter,
        } = self;
        for address in listeners.iter().filter_map(|l| l.local_addr().ok()) {
            let scheme = if config.server.tls.is_some() {
                "https"
            } else {
                "http"
            };
            tracing::info!(%address, scheme, "listening on {address}");
        }
        // The admin listener outlives the drain, so `/readyz` can say so.
        let admin = admin.map(|listener| {
            if let Ok(address) = listener.local_addr() {
                tracing::info!(%address, "admin listening on {address}");
            }
            tokio::spawn(admin::serve(listener, proxy.clone(), readiness.clone()))
        });

        let mut background = JoinSet::new();
        let stats_line = (!config.log.stats_interval.is_zero()).then(|| {
            let reporter = StatsReporter::new(proxy.stats().clone(), {
                let coordinator = proxy.coordinator().clone();
                move || coordinator.census()
            });
            PeriodicReport::new(reporter, config.log.stats_interval)
        });
        if let Some(stats_line) = &stats_line {
            background.spawn(stats_line.clone().run());
        }
        let budget = proxy.coordinator().budget.clone();
        background.spawn(memory::release_freed_memory(budget));
        if let Some(exporter) = exporter {
            background.spawn(exporter);
        }
        // Each listener accepts on its own task and hands connections to this one, which owns
        // the graceful-shutdown registry.
        let (accepted_tx, accepted) = mpsc::channel::<(TcpStream, SocketAddr)>(1024);
        for listener in listeners {
            background.spawn(accept_loop(listener, accepted_tx.clone()));
        }
        drop(accepted_tx);

        let workers = match Workers::start(config.server.workers) {
            Ok(workers) => workers,
            Err(err) => {
                tracing::error!(error = %err, "starting the worker threads failed");
                return Shutdown::GraceRanOut;
            }
        };
        let connection_server = Arc::new(ConnectionServer::new(
            &config.server,
            proxy.clone(),
            workers,
            certificate,
        ));
        // Every connection holds its part of the drain until it ends, so the drain counts the
        // open connections and ends when the last one is gone.
        let drain = Drain::new();
        let accepting = Accepting {
            accepted,
            connections: Arc::new(Semaphore::new(config.server.max_connections)),
            connection_server: connection_server.clone(),
            drain: drain.clone(),
        };

        readiness.set(true);
        let accepting = accepting.until(shutdown).await;
        readiness.set(false);
        let outcome = stop_accepting_and_drain(accepting, background, drain, &config).await;
        // It owns the worker threads, which run the connections: dropped once they are done.
        drop(connection_server);
        // The requests since the last stats line would otherwise appear in none.
        if let Some(stats_line) = stats_line {
            stats_line.report_now();
        }
        if let Some(admin) = admin {
            admin.abort();
        }
        outcome
    }
}

/// After the shutdown signal (`/readyz` already 503): accepts for `drain_delay` more, so a
/// load balancer (a Kubernetes Service) has a moment to stop sending new clients, then closes
/// the listeners and drains for up to `shutdown_grace`.
async fn stop_accepting_and_drain(
    accepting: Accepting,
    mut background: JoinSet<()>,
    drain: Drain,
    config: &Config,
) -> Shutdown {
    let delay = config.server.drain_delay;
    let accepting = if delay.is_zero() {
        accepting
    } else {
        tracing::info!(
            drain_delay = %humantime::format_duration(delay),
            "shutting down: /readyz says 503; still accepting for drain_delay"
        );
        accepting.until(tokio::time::sleep(delay)).await
    };
    drop(accepting);
    drain.announce(Phase::Draining);
    // Waits for the accept loops to end, so their listeners are closed (new connections
    // refused) before the drain is announced.
    background.shutdown().await;
    finish_open_connections(&drain, config.server.shutdown_grace).await
}

/// How a shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Every connection finished within `shutdown_grace`.
    Drained,
    /// The grace period ran out and the remaining connections were closed (or the server
    /// could not start its workers).
    GraceRanOut,
}

/// The accept side of a running server: connections handed over by the accept loops, each
/// served on a worker while a `max_connections` slot is free.
struct Accepting {
    accepted: mpsc::Receiver<(TcpStream, SocketAddr)>,
    connections: Arc<Semaphore>,
    connection_server: Arc<ConnectionServer>,
    drain: Drain,
}

impl Accepting {
    /// Serves new connections until `stop` resolves (or every accept loop has ended).
    async fn until(mut self, stop: impl Future<Output = ()>) -> Accepting {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                next = self.accepted.recv() => {
                    let Some((stream, peer)) = next else { break };
                    let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                        tokio::spawn(refuse(stream));
                        continue;
                    };
                    match stream.into_std() {
                        Ok(stream) => {
                            self.connection_server.spawn(stream, peer, self.drain.open(), permit);
                        }
                        Err(err) => tracing::debug!(%peer, error = %err, "handing over a connection failed"),
                    }
                }
            }
        }
        self
    }
}

/// Waits until every connection has ended, or `grace` has passed (then cuts those left), and
/// says which.
async fn finish_open_connections(drain: &Drain, grace: Duration) -> Shutdown {
    let open = drain.open_connections();
    tracing::info!(
        open_connections = open,
        grace = %humantime::format_duration(grace),
        "shutting down: no longer accepting, draining open connections"
    );
    if tokio::time::timeout(grace, drain.all_gone()).await.is_err() {
        tracing::warn!(
            grace = %humantime::format_duration(grace),
            open_connections = drain.open_connections(),
            "shutdown grace period ran out; closing the remaining connections"
        );
        drain.announce(Phase::Cut);
        // Each connection drops its requests as it sees the cut; the last stats line waits
        // for them (a moment, not another grace).
        let _ = tokio::time::timeout(Duration::from_secs(1), drain.all_gone()).await;
        Shutdown::GraceRanOut
    } else {
        tracing::info!("all connections drained");
        Shutdown::Drained
    }
}
