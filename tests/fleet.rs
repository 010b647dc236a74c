//! The fleet layer: several proxies in front of one origin, sharing one `redis-server` that
//! the test starts on a loopback port. One origin request per key across the proxies, a
//! holder that dies, Redis that dies, and what must never cross (private responses, another
//! key's result, another variant).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use coalesce_proxy::config::Config;
use coalesce_proxy::observe::stats::StatsSnapshot;
use coalesce_proxy::proxy::Proxy;
use coalesce_proxy::server::Server;
use coalesce_proxy::tools::origin::{body, Origin, OriginSettings};
use http::{Method, StatusCode};
use tokio::task::JoinHandle;

use crate::util::*;

/// A `redis-server` on a free loopback port, killed when dropped.
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    /// Starts one, or `None` where redis-server is not installed (never under CI=true:
    /// `.ci/run` installs it).
    async fn start() -> Option<Redis> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI needs redis-server for the fleet tests (see .ci/run)"
            );
            eprintln!("redis-server is not installed: skipping");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let redis = Redis {
            port,
            child: Some(child),
        };
        let url = redis.url();
        let ready = eventually(|| {
            redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        })
        .await;
        assert!(ready, "redis-server answers on {port}");
        Some(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url().as_str())
            .and_then(|c| c.get_connection())
            .expect("a connection to the test's redis-server")
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One proxy of the fleet, in this process.
struct Peer {
    addr: SocketAddr,
    proxy: Arc<Proxy>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn fleet_config(origin: &str, redis: &str, route_extra: &str) -> String {
    config_text(
        origin,
        "",
        &format!("fleet = {{ redis = \"{redis}\", lease = \"1s\" }}\n{route_extra}"),
    )
}

impl Peer {
    async fn start(config: &str) -> Peer {
        raise_fd_limit();
        let config = Config::from_toml(config).expect("test config is valid");
        let server = Server::bind(config).await.expect("proxy binds");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let peer = Peer {
            addr: server.local_addrs()[0],
            proxy: server.proxy().clone(),
            _stop: stop,
        };
        tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        peer
    }

    fn stats(&self) -> StatsSnapshot {
        self.proxy.stats().snapshot()
    }
}

async fn origin() -> Origin {
    Origin::start(OriginSettings::default())
        .await
        .expect("origin starts")
}

/// Two sidecars on one Redis, the fleet's holder and one that finds the key taken: `clients`
/// clients ask A for `path` and are held at the origin's gate `gate` (A holds the lease), then
/// as many ask B. Returns the peers and both herds, still waiting; a test that needs no more
/// of A binds it as `_a`, not `_`, since a dropped peer stops serving its herd.
async fn held_at_a(
    origin: &Origin,
    config: &str,
    path: &'static str,
    gate: &str,
    clients: usize,
) -> (Peer, Peer, JoinHandle<Vec<Reply>>, JoinHandle<Vec<Reply>>) {
    let (a, b) = (Peer::start(config).await, Peer::start(config).await);
    let on_a = tokio::spawn(herd(a.addr, clients, Method::GET, path, &[]));
    assert!(origin.wait_until(PATIENCE, |o| o.reached(gate)).await);
    let on_b = tokio::spawn(herd(b.addr, clients, Method::GET, path, &[]));
    (a, b, on_a, on_b)
}

fn assert_all_exact(replies: &[Reply], size: usize) {
    for reply in replies {
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body(), &body(size));
    }
}

/// Sums a figure over the peers.
fn total(peers: &[Peer], figure: impl Fn(&StatsSnapshot) -> u64) -> u64 {
    peers.iter().map(|p| figure(&p.stats())).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_on_three_proxies_costs_the_origin_one_request() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let origin = origin().await;
    let config = fleet_config(&origin.url(), &redis.url(), "");
    let mut peers = Vec::new();
    for _ in 0..3 {
        peers.push(Peer::start(&config).await);
    }
    let path = "/hot?size=3000&hold_head=h";
    let herds = peers
        .iter()
        .map(|peer| herd(peer.addr, 5, Method::GET, path, &[]))
        .collect::<Vec<_>>();
    let release = async {
        // One proxy holds the lease and is at the origin; the other two wait on it, each
        // with its own four local followers.
        assert!(origin.wait_until(PATIENCE, |o| o.reached("h")).await);
        assert!(
            eventually(
                || total(&peers, |s| s.fleet_waited) == 2 && total(&peers, |s| s.joined) == 12
            )
            .await,
            "waited {} joined {}",
            total(&peers, |s| s.fleet_waited),
            total(&peers, |s| s.joined)
        );
        origin.open_gate("h");
    };
    let (replies, ()) = tokio::join!(futures_util::future::join_all(herds), release);
    for replies in &replies {
        assert_all_exact(replies, 3000);
    }
    assert_eq!(origin.hits(), 1);
    assert_eq!(total(&peers, |s| s.fleet_won), 1);
    assert_eq!(total(&peers, |s| s.fleet_served), 2);
    assert_eq!(total(&peers, |s| s.fleet_fallback), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_killed_mid_fetch_is_taken_over_by_one_waiter() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let origin = origin().await;
    let config = fleet_config(&origin.url(), &redis.url(), "");
    // The holder is a process of its own, so that it can die as a process does: no
    // release, no more renewals.
    let file = TempFile::new("toml", config.as_bytes());
    let (mut holder, mut log) = spawn_with_log(
        Command::new(crate::command_line::BINARY)
            .arg("--config")
            .arg(&file.0),
    );
    let holder_addr = listen_address(&mut log).await;
    let path = "/dies?size=2000&hold_head=d";
    let first = tokio::spawn(try_herd(holder_addr, 1, Method::GET, path, &[]));
    assert!(origin.wait_until(PATIENCE, |o| o.reached("d")).await);
    let waiter = Peer::start(&config).await;
    let herd = tokio::spawn(herd(waiter.addr, 4, Method::GET, path, &[]));
    assert!(eventually(|| waiter.stats().fleet_waited == 1 && waiter.stats().joined == 3).await);
    holder.kill().expect("kill the holder");
    let _ = holder.wait();
    let _ = first.await;
    // Its lease runs out (1 s), the waiter takes it and fetches: a second origin request,
    // held at the same gate until the test sees it.
    assert!(origin.wait_until(PATIENCE, |o| o.hits() == 2).await);
    origin.open_gate("d");
    let replies = herd.await.expect("herd");
    assert_all_exact(&replies, 2000);
    assert_eq!(waiter.stats().fleet_taken_over, 1);
    assert_eq!(origin.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_while_a_proxy_waits_falls_back_without_a_client_error() {
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    let origin = origin().await;
    let config = fleet_config(&origin.url(), &redis.url(), "");
    let path = "/outage?size=1500&hold_head=o";
    let (_a, b, on_a, on_b) = held_at_a(&origin, &config, path, "o", 3).await;
    assert!(eventually(|| b.stats().fleet_waited == 1 && b.stats().joined == 2).await);
    redis.kill();
    // B stops waiting on a Redis that is gone, and fetches for its own clients.
    assert!(origin.wait_until(PATIENCE, |o| o.hits() == 2).await);
    origin.open_gate("o");
    assert_all_exact(&on_a.await.expect("herd a"), 1500);
    assert_all_exact(&on_b.await.expect("herd b"), 1500);
    assert_eq!(b.stats().fleet_fallback, 1);
    // Redis is remembered as down: the next flight does not ask it, and says so.
    let later = get(b.addr, "/outage-later?size=10").await;
    assert_eq!(later.body(), &body(10));
    assert_eq!(b.stats().fleet_fallback, 2);
    let metrics = b.proxy.render_metrics();
    assert_eq!(metric(&metrics, "coalesce_proxy_fleet_redis_down"), 1.0);
    let fallbacks = "coalesce_proxy_fleet_events_total{event=\"fallback\"}";
    assert_eq!(metric(&metrics, fallbacks), 2.0);
    assert_eq!(origin.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_response_releases_the_waiters_and_never_reaches_redis() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let origin = origin().await;
    let config = fleet_config(&origin.url(), &redis.url(), "");
    let path = "/mine?size=700&hold_head=p&header=cache-control:private";
    let (_a, b, on_a, on_b) = held_at_a(&origin, &config, path, "p", 1).await;
    assert!(eventually(|| b.stats().fleet_waited == 1).await);
    origin.open_gate("p");
    assert_all_exact(&on_a.await.expect("a"), 700);
    assert_all_exact(&on_b.await.expect("b"), 700);
    // B went upstream itself as soon as A's response showed it was private.
    assert_eq!(origin.hits(), 2);
    assert_eq!(b.stats().fleet_released, 1);
    assert_eq!(b.stats().fleet_served, 0);
    // Redis holds A's release, and no response body.
    let mut redis = redis.connection();
    let names: Vec<String> = redis::cmd("KEYS")
        .arg("coalesce-proxy:all:result:*")
        .query(&mut redis)
        .expect("KEYS");
    assert_eq!(names.len(), 1);
    let value: Vec<u8> = redis::cmd("GET")
        .arg(&names[0])
        .query(&mut redis)
        .expect("GET");
    assert!(
        value.len() < 64,
        "a release, not a response: {} bytes",
        value.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_after_a_herd_is_served_from_redis_with_its_age() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let origin = origin().await;
    let config = fleet_config(&origin.url(), &redis.url(), "cache = { enabled = true }");
    let a = Peer::start(&config).await;
    let path = "/warm?size=900&header=cache-control:max-age=600&header=age:30";
    assert_eq!(get(a.addr, path).await.body(), &body(900));
    // A replica that starts now: its local cache is empty, Redis is not.
    let b = Peer::start(&config).await;
    let first = get(b.addr, path).await;
    assert_eq!(first.body(), &body(900));
    // RFC 9111 §4.2.3: the age it arrived with, plus its time in the fleet.
    let age: u64 = first
        .header("age")
        .and_then(|a| a.parse().ok())
        .expect("Age");
    assert!((30..=31).contains(&age), "Age {age}");
    assert_eq!(origin.hits(), 1);
    assert_eq!(b.stats().fleet_cache_hit, 1);
    // And it stored it: the next request is its own cache's hit.
    let second = get(b.addr, path).await;
    assert_eq!(second.outcome(), "hit");
    assert_eq!(origin.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_for_another_key_is_refused() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let origin = origin().await;
    let config = fleet_config(&origin.url(), &redis.url(), "cache = { enabled = true }");
    let a = Peer::start(&config).await;
    let fresh = "header=cache-control:max-age=600";
    let (x, y) = (
        format!("/x?size=100&{fresh}"),
        format!("/y?size=200&{fresh}"),
    );
    get(a.addr, &x).await;
    get(a.addr, &y).await;
    // Someone swaps the stored values: x's name now holds y's response.
    let mut redis = redis.connection();
    let names: Vec<String> = redis::cmd("KEYS")
        .arg("coalesce-proxy:all:result:*")
        .query(&mut redis)
        .expect("KEYS");
    assert_eq!(names.len(), 2);
    let values: Vec<Vec<u8>> = names
        .iter()
        .map(|n| redis::cmd("GET").arg(n).query(&mut redis).expect("GET"))
        .collect();
    let _: () = redis::cmd("SET")
        .arg(&names[0])
        .arg(&values[1])
        .query(&mut redis)
        .expect("SET");
    let _: () = redis::cmd("SET")
        .arg(&names[1])
        .arg(&values[0])
        .query(&mut redis)
        .expect("SET");
    let b = Peer::start(&config).await;
    assert_eq!(get(b.addr, &x).await.body(), &body(100));
    assert_eq!(get(b.addr, &y).await.body(), &body(200));
    assert_eq!(b.stats().fleet_refused, 2);
    assert_eq!(b.stats().fleet_cache_hit, 0);
    assert_eq!(origin.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_variant_is_not_served_from_the_fleet() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let origin = origin().await;
    let config = fleet_config(&origin.url(), &redis.url(), "cache = { enabled = true }");
    let a = Peer::start(&config).await;
    let path = "/lang?size=50&header=cache-control:max-age=600&header=vary:accept-language";
    let en = [("accept-language", "en")];
    let de = [("accept-language", "de")];
    fetch(a.addr, Method::GET, path, &en, bytes::Bytes::new()).await;
    let b = Peer::start(&config).await;
    // RFC 9111 §4.1: a stored response is used only for requests with its `Vary` values.
    let german = fetch(b.addr, Method::GET, path, &de, bytes::Bytes::new()).await;
    assert_eq!(german.body(), &body(50));
    assert_eq!(b.stats().fleet_cache_hit, 0);
    assert_eq!(b.stats().fleet_refused, 1);
    assert_eq!(origin.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_stops_answering_costs_a_flight_its_timeout_and_is_tried_again_later() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let origin = origin().await;
    let fleet = format!(
        "fleet = {{ redis = \"{}\", timeout = \"50ms\", retry = \"200ms\" }}",
        redis.url()
    );
    let peer = Peer::start(&config_text(&origin.url(), "", &fleet)).await;
    assert_eq!(get(peer.addr, "/before?size=10").await.body(), &body(10));
    assert_eq!(peer.stats().fleet_won, 1);
    // A Redis that is there but says nothing (a partition, a stalled server).
    let pid = redis.child.as_ref().expect("running").id().to_string();
    let signal = |name: &str| {
        let status = Command::new("kill").args([name, &pid]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill {name}");
    };
    signal("-STOP");
    let during = get(peer.addr, "/during?size=20").await;
    assert_eq!(during.body(), &body(20));
    assert_eq!(peer.stats().fleet_fallback, 1);
    let redis_down = || {
        metric(
            &peer.proxy.render_metrics(),
            "coalesce_proxy_fleet_redis_down",
        )
    };
    assert_eq!(redis_down(), 1.0);
    signal("-CONT");
    // After `retry` (each request a new key, every one answered), a flight asks Redis
    // again, and it answers.
    let (addr, proxy) = (peer.addr, peer.proxy.clone());
    let mut n = 0;
    let back = eventually_async(|| {
        n += 1;
        let (path, proxy) = (format!("/after-{n}?size=5"), proxy.clone());
        async move {
            assert_eq!(get(addr, &path).await.body(), &body(5));
            proxy.stats().snapshot().fleet_won >= 2
        }
    })
    .await;
    assert!(back, "Redis asked again after retry");
    // The one during the stall, and every one in the `retry` window after it.
    assert_eq!(peer.stats().fleet_fallback, n);
    assert_eq!(redis_down(), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_past_body_max_releases_the_waiters_at_its_head() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let origin = origin().await;
    let fleet = format!(
        "fleet = {{ redis = \"{}\", body_max = \"1KiB\" }}",
        redis.url()
    );
    let config = config_text(&origin.url(), "", &fleet);
    let path = "/large?size=2000&hold_head=m";
    let (_a, b, on_a, on_b) = held_at_a(&origin, &config, path, "m", 1).await;
    assert!(eventually(|| b.stats().fleet_waited == 1).await);
    origin.open_gate("m");
    assert_all_exact(&on_a.await.expect("a"), 2000);
    assert_all_exact(&on_b.await.expect("b"), 2000);
    // Its Content-Length is past body_max: B was let go as the head arrived, and fetched.
    assert_eq!(b.stats().fleet_released, 1);
    assert_eq!(b.stats().fleet_served, 0);
    assert_eq!(origin.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_waits_no_longer_than_the_lease_and_max_wait() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let origin = origin().await;
    let route = format!(
        "fleet = {{ redis = \"{}\", lease = \"300ms\" }}\ncoalesce = {{ max_wait = \"200ms\" }}",
        redis.url()
    );
    let config = config_text(&origin.url(), "", &route);
    let path = "/slow?size=300&hold_head=s";
    let (a, b, on_a, on_b) = held_at_a(&origin, &config, path, "s", 1).await;
    // The holder is alive and renews its lease, and its origin says nothing: B gives up
    // waiting after lease + max_wait and goes upstream, while the gate is still shut.
    assert!(origin.wait_until(PATIENCE, |o| o.hits() == 2).await);
    assert_eq!(b.stats().fleet_released, 1);
    assert_eq!(b.stats().fleet_taken_over, 0);
    assert_eq!(a.stats().fleet_won, 1);
    origin.open_gate("s");
    assert_all_exact(&on_a.await.expect("a"), 300);
    assert_all_exact(&on_b.await.expect("b"), 300);
    assert_eq!(origin.hits(), 2);
}
