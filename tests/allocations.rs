//! Heap allocations on the proxy's worker threads, per pass-through request and per follower,
//! with a ceiling at the figure reached (issue 14): an allocation regression fails here
//! instead of waiting for the next benchmark.
//!
//! A test binary of its own, because it installs a counting global allocator. It counts
//! `alloc` and `realloc` calls made on threads named `worker-*` (the proxy's workers,
//! `server::workers`); the origin and the clients run on the test's runtime and are not
//! counted. Requests go over connections opened (and warmed) before counting starts, so the
//! figures are per request, not per connection.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coalesce_proxy::config::Config;
use coalesce_proxy::proxy::Proxy;
use coalesce_proxy::server::Server;
use coalesce_proxy::tools::origin::{Origin, OriginSettings};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

// The ceilings sit just above the figures reached, so that a regression of a few allocations
// per request fails here. Measured: 26.1 per GET nobody joins (25.1 before hyper boxed each
// request's future instead of keeping a box per connection; 27.1-28.4 before hyper let go of
// an emptied read buffer after each head, which costs two allocations per request: the next
// head's buffer and its shared count; 36-37 with hyper-util's pooled client and a task per
// flight; 72-76 before the per-request cost work), 11.4 per follower (10.4 before the boxed
// future; 13.2; 18.2).

/// Allocations a GET nobody joins (a leader, served like a pass-through) may cost the proxy.
const PASS_THROUGH_CEILING: f64 = 32.0;
/// Allocations each follower of a flight may cost the proxy.
const FOLLOWER_CEILING: f64 = 12.0;
/// Heap bytes the workers may hold for each follower waiting for its flight's head, beyond
/// what its idle connection holds. Measured 1,274: its request's future (1,072 bytes, which
/// hyper now boxes per request; before, the idle connection held room for it and a follower
/// added 155-208 bytes), 1,398-1,403 with the future at 1,200.
const FOLLOWER_HELD_CEILING: f64 = 1_536.0;
/// Heap bytes the workers may hold for each idle keep-alive HTTP/1.1 connection (after one
/// request): issue 28's goal, 4 KiB. Measured: 3,184 with the connection's task counted (its
/// 1,024 bytes are allocated where the accept side spawns it, which this test did not count
/// before) and no room kept for a request's future (`vendor/hyper.diff`, dispatch.rs); counted
/// so, 4,308-4,392 with the room kept, and about 4,550 with the task's old 1,280 bytes. Before
/// that, without the task: 3,235-3,342 with the patched hyper letting go of an emptied read
/// buffer; 4,119-4,775 before (5,446 now and then on a loaded machine: a read buffer still
/// held), 18,133 before the patch (hyper's 8 KiB read and 8 KiB head-write buffers, kept for
/// the connection's life).
const IDLE_CONNECTION_CEILING: f64 = 3_584.0;
/// Heap bytes per client waiting in a herd over HTTP/1.1, its connection included: the sum of
/// the two above. Measured 4,551 (4,587-4,628 with the future at 1,200; issue 28's goal is
/// 2 KiB of RSS).
const WAITING_CLIENT_CEILING: f64 = 4_864.0;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// Bytes allocated on worker threads, less the bytes freed there: what the workers hold.
static HELD: AtomicI64 = AtomicI64::new(0);

thread_local! {
    /// 0: not yet known; 1: a worker thread; 2: any other thread.
    static KIND: Cell<u8> = const { Cell::new(0) };
    /// Set while the thread's name is being looked up, which may itself allocate.
    static LOOKING: Cell<bool> = const { Cell::new(false) };
}

fn on_worker() -> bool {
    let kind = KIND.try_with(Cell::get).unwrap_or(2);
    if kind != 0 {
        return kind == 1;
    }
    if LOOKING
        .try_with(|looking| looking.replace(true))
        .unwrap_or(true)
    {
        return false;
    }
    let worker = std::thread::current()
        .name()
        .is_some_and(|name| name.starts_with("worker-"));
    let _ = KIND.try_with(|k| k.set(if worker { 1 } else { 2 }));
    let _ = LOOKING.try_with(|looking| looking.set(false));
    worker
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if on_worker() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            HELD.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if on_worker() {
            HELD.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        }
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if on_worker() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            HELD.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

const PATIENCE: Duration = Duration::from_secs(20);

/// A proxy with one route to a fresh origin, on one worker. The server's own runtime (its
/// accept loop) runs on a thread named like the workers, so that what it allocates for each
/// connection counts: tokio allocates a task where it is spawned, and the accept side spawns
/// every connection's task (1,024 bytes, more than a third of an idle connection's heap).
async fn start() -> (Origin, SocketAddr, Arc<Proxy>) {
    let origin = Origin::start(OriginSettings::default())
        .await
        .expect("origin starts");
    let config = Config::from_toml(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n[log]\nstats_interval = \"0s\"\n\
         [upstreams.origin]\nurl = \"{}\"\n[[routes]]\npath_prefix = \"/\"\nupstream = \"origin\"\n",
        origin.url()
    ))
    .expect("valid config");
    let (bound, started) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("worker-accept".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let server = Server::bind(config).await.expect("proxy binds");
                let _ = bound.send((server.local_addrs()[0], server.proxy().clone()));
                server.run(std::future::pending()).await;
            });
        })
        .expect("server thread");
    let (addr, proxy) = started.await.expect("the server started");
    (origin, addr, proxy)
}

/// One keep-alive HTTP/1.1 client connection that reads whole responses.
struct Client(BufReader<TcpStream>);

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client(BufReader::new(
            TcpStream::connect(addr).await.expect("connect"),
        ))
    }

    async fn send(&mut self, path: &str) {
        let request = format!("GET {path} HTTP/1.1\r\nhost: alloc.test\r\n\r\n");
        self.0
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .expect("send");
    }

    /// Reads one response and returns its status and body length.
    async fn receive(&mut self) -> (u16, usize) {
        let mut line = String::new();
        self.0.read_line(&mut line).await.expect("status line");
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut length = 0;
        loop {
            line.clear();
            self.0.read_line(&mut line).await.expect("header");
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().expect("content-length");
                }
            }
        }
        let mut body = vec![0; length];
        self.0.read_exact(&mut body).await.expect("body");
        (status, length)
    }

    async fn get(&mut self, path: &str) -> (u16, usize) {
        self.send(path).await;
        self.receive().await
    }
}

/// Waits until `done` holds, checking on every scheduler turn; false after `PATIENCE`.
async fn eventually(done: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done() {
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_through_request_allocates_at_most_the_ceiling() {
    let (_origin, addr, proxy) = start().await;
    let mut client = Client::connect(addr).await;
    for i in 0..50 {
        assert_eq!(
            client.get(&format!("/warm/{i}?size=1024")).await,
            (200, 1024)
        );
    }
    assert!(eventually(|| proxy.stats().snapshot().flights_done == 50).await);
    let requests = 500;
    let done = proxy.stats().snapshot().flights_done;
    let before = allocations();
    for i in 0..requests {
        assert_eq!(client.get(&format!("/k/{i}?size=1024")).await, (200, 1024));
    }
    // The last flight's end is recorded just after its last byte is out.
    assert!(eventually(|| proxy.stats().snapshot().flights_done == done + requests).await);
    let per_request = (allocations() - before) as f64 / requests as f64;
    println!("allocations per pass-through request: {per_request:.1}");
    assert!(
        per_request <= PASS_THROUGH_CEILING,
        "{per_request:.1} allocations per pass-through request; the ceiling is {PASS_THROUGH_CEILING}"
    );
}

/// What one herd of `n` GETs costs the workers, on connections opened and warmed before
/// counting starts: the allocations from its start to its end, and the heap bytes held
/// while all of it waits for the head.
struct HerdCost {
    allocations: u64,
    held_while_waiting: i64,
    /// By the herd's connections, open and idle after one request each.
    held_by_connections: i64,
}

async fn herd_cost(
    origin: &Origin,
    addr: SocketAddr,
    proxy: &Proxy,
    n: usize,
    gate: &str,
) -> HerdCost {
    let warmed = proxy.stats().snapshot().flights_done + n as u64;
    let held_before_connecting = HELD.load(Ordering::Relaxed);
    let mut clients = Vec::new();
    let mut flights = warmed - n as u64;
    for i in 0..n {
        let mut client = Client::connect(addr).await;
        assert_eq!(client.get(&format!("/warm-{gate}/{i}")).await.0, 200);
        clients.push(client);
        // One warming flight at a time, each ended (its upstream connection back in the
        // pool) before the next: otherwise, on a loaded machine, the next could find the
        // pool empty and open another upstream connection, whose buffers would count here
        // as the client connections' (CI once measured 5,446 bytes per connection so).
        flights += 1;
        assert!(eventually(|| proxy.stats().snapshot().flights_done == flights).await);
    }
    assert_eq!(flights, warmed);
    let joined = proxy.stats().snapshot().joined;
    let done = proxy.stats().snapshot().flights_done;
    let before = allocations();
    let held_before = HELD.load(Ordering::Relaxed);
    let held_by_connections = held_before - held_before_connecting;
    let path = format!("/herd-{gate}?size=1024&hold_head={gate}");
    for client in &mut clients {
        client.send(&path).await;
    }
    let target = joined + n as u64 - 1;
    assert!(eventually(|| proxy.stats().snapshot().joined == target).await);
    assert!(eventually(|| origin.reached(gate)).await);
    let held_while_waiting = HELD.load(Ordering::Relaxed) - held_before;
    origin.open_gate(gate);
    for client in &mut clients {
        assert_eq!(client.receive().await, (200, 1024));
    }
    assert!(eventually(|| proxy.stats().snapshot().flights_done == done + 1).await);
    HerdCost {
        allocations: allocations() - before,
        held_while_waiting,
        held_by_connections,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_allocates_and_holds_at_most_the_ceilings() {
    let (origin, addr, proxy) = start().await;
    // Two herds that differ only in size: the difference is what the extra followers cost.
    let small = herd_cost(&origin, addr, &proxy, 11, "a").await;
    let large = herd_cost(&origin, addr, &proxy, 111, "b").await;
    let per_follower = large.allocations.saturating_sub(small.allocations) as f64 / 100.0;
    let held = (large.held_while_waiting - small.held_while_waiting) as f64 / 100.0;
    let connection = (large.held_by_connections - small.held_by_connections) as f64 / 100.0;
    println!(
        "allocations per follower: {per_follower:.1}; heap bytes held per waiting follower: \
         {held:.0}, and per idle connection: {connection:.0}"
    );
    assert!(
        per_follower <= FOLLOWER_CEILING,
        "{per_follower:.1} allocations per follower; the ceiling is {FOLLOWER_CEILING}"
    );
    assert!(
        held <= FOLLOWER_HELD_CEILING,
        "{held:.0} heap bytes held per waiting follower; the ceiling is {FOLLOWER_HELD_CEILING}"
    );
    let waiting = connection + held;
    println!("heap bytes per waiting client, its connection included: {waiting:.0}");
    assert!(
        waiting <= WAITING_CLIENT_CEILING,
        "{waiting:.0} heap bytes per waiting client; the ceiling is {WAITING_CLIENT_CEILING}"
    );
    assert!(
        connection <= IDLE_CONNECTION_CEILING,
        "{connection:.0} heap bytes held per idle connection; the ceiling is {IDLE_CONNECTION_CEILING}"
    );
}

/// Bytes the future of one request may take. hyper boxes it for its request (over HTTP/2, it
/// is inline in the stream's task), so a client waiting on a flight pays for each of its
/// bytes, whatever its request does; the
/// phases borrow one request context rather than moving it along (a moved value keeps its
/// room in every future it passed through), and the pass-through's upstream send is boxed.
/// Measured: 1,072 bytes, in the test and release profiles alike (1,200 while four of the
/// phases were `async fn`s, whose arguments take their room twice; 1,792 while the future
/// moved what it captured into locals of its own, holding them twice; 1,640 and 2,312
/// earlier, plus 272 in the connection's service closure).
const REQUEST_FUTURE_CEILING: usize = 1_152;

#[test]
fn the_request_future_stays_within_its_ceiling() {
    fn future_size<F, Fut>(_: F) -> usize
    where
        F: Fn(http::Request<hyper::body::Incoming>) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }
    let config = Config::from_toml(
        "[upstreams.a]\nurl = \"http://127.0.0.1:1\"\n[[routes]]\npath_prefix = \"/\"\nupstream = \"a\"\n",
    )
    .expect("valid");
    let proxy = Arc::new(Proxy::new(&config, Arc::default()));
    let connection = coalesce_proxy::proxy::Connection {
        peer: "127.0.0.1:1".parse().expect("address"),
        tls: false,
    };
    let size = future_size(|request| proxy.handle(request, connection));
    println!("bytes per request future: {size}");
    assert!(
        size <= REQUEST_FUTURE_CEILING,
        "{size} bytes per request future; the ceiling is {REQUEST_FUTURE_CEILING}"
    );
}
