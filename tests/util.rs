//! Test harness: a real origin, a real proxy on 127.0.0.1:0, and real clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use coalesce_proxy::config::Config;
use coalesce_proxy::proxy::Proxy;
use coalesce_proxy::server::{Server, ServerHandle};
use coalesce_proxy::tools::origin::{Origin, OriginSettings};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Barrier;

/// Upper bound for any single wait in a test; a hang fails the test instead of the suite.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub struct Harness {
    pub origin: Origin,
    pub addr: SocketAddr,
    /// Every listen address, `addr` first.
    pub addrs: Vec<SocketAddr>,
    /// The admin listener, when the configuration has `[admin]`.
    pub admin: Option<SocketAddr>,
    pub proxy: Arc<Proxy>,
    /// Reloads the running proxy (what SIGHUP does in the binary).
    pub handle: ServerHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A configuration with one upstream `origin` and one route `/`. `upstream_extra` is added to
/// the `[upstreams.origin]` table, `rest` at the end of the file.
pub fn config_text(origin: &str, upstream_extra: &str, rest: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "2s"
workers = 2

[log]
stats_interval = "0s"

[upstreams.origin]
url = "{origin}"
{upstream_extra}

[[routes]]
name = "all"
path_prefix = "/"
upstream = "origin"

{rest}
"#
    )
}

/// `config` with `line` added to its `[server]` table.
pub fn with_server_setting(config: &str, line: &str) -> String {
    config.replacen("[server]\n", &format!("[server]\n{line}\n"), 1)
}

/// Starts the proxy binary as `command` describes, with its stderr as a stream of lines.
pub fn spawn_with_log(
    command: &mut std::process::Command,
) -> (
    std::process::Child,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use std::io::{BufRead, BufReader};
    let mut child = command
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, lines)
}

/// A file in the temporary directory that removes itself.
pub struct TempFile(pub std::path::PathBuf);

impl TempFile {
    pub fn new(extension: &str, contents: &[u8]) -> TempFile {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "coalesce-proxy-test-{}-{}.{extension}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::write(&path, contents).expect("write a temporary file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Reads text log lines until the proxy says where it listens.
pub async fn listen_address(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
) -> SocketAddr {
    loop {
        let line = tokio::time::timeout(PATIENCE, lines.recv())
            .await
            .expect("a log line in time")
            .expect("the proxy is alive");
        if let Some(at) = line.find("listening on ") {
            let rest = &line[at + "listening on ".len()..];
            return rest
                .split_whitespace()
                .next()
                .and_then(|a| a.parse().ok())
                .expect("an address");
        }
    }
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::start_with(OriginSettings::default(), "", "").await
    }

    pub async fn start_with(settings: OriginSettings, upstream_extra: &str, rest: &str) -> Harness {
        Harness::start_text(settings, |origin| config_text(origin, upstream_extra, rest)).await
    }

    /// The default configuration with `line` added to `[server]`.
    pub async fn start_with_server_setting(line: &str) -> Harness {
        Harness::start_text(OriginSettings::default(), |origin| {
            with_server_setting(&config_text(origin, "", ""), line)
        })
        .await
    }

    /// Starts with the configuration `make` writes for the origin's URL.
    pub async fn start_text(
        settings: OriginSettings,
        make: impl FnOnce(&str) -> String,
    ) -> Harness {
        let origin = Origin::start(settings).await.expect("origin starts");
        Harness::start_in_front_of(origin, make).await
    }

    /// Starts a proxy in front of an origin the test started (a TLS one, say), with the
    /// configuration `make` writes for the origin's URL.
    pub async fn start_in_front_of(origin: Origin, make: impl FnOnce(&str) -> String) -> Harness {
        raise_fd_limit();
        count_panics();
        let config = Config::from_toml(&make(&origin.url())).expect("test config is valid");
        let server = Server::bind(config).await.expect("proxy binds");
        let addrs = server.local_addrs();
        let addr = addrs[0];
        let admin = server.admin_addr();
        let proxy = server.proxy().clone();
        let handle = server.handle();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Harness {
            origin,
            addr,
            addrs,
            admin,
            proxy,
            handle,
            stop: Some(stop),
        }
    }

    /// Starts the proxy's shutdown (what SIGTERM does in the binary).
    pub fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub fn flights(&self) -> usize {
        self.proxy.coordinator().len()
    }

    /// Responses on route `all` with any of `outcomes` whose bodies have ended, completely or
    /// not: the proxy's record of each, written when hyper finishes or drops the body. A
    /// client that went away mid-body is counted once the proxy has noticed.
    pub fn responses_done(&self, outcomes: &[&str]) -> u64 {
        let exposition = self.proxy.render_metrics();
        outcomes
            .iter()
            .map(|outcome| {
                let series = format!(
                    "coalesce_proxy_request_duration_seconds_count{{route=\"all\",outcome=\"{outcome}\"}}"
                );
                metric(&exposition, &series) as u64
            })
            .sum()
    }

    /// Waits until `n` responses with any of `outcomes` have ended (see
    /// [`Harness::responses_done`]).
    pub async fn wait_responses_done(&self, outcomes: &[&str], n: u64) {
        assert!(
            eventually(|| self.responses_done(outcomes) == n).await,
            "{} {outcomes:?} responses ended, not {n}",
            self.responses_done(outcomes)
        );
    }

    /// Waits until the table is empty (flights end on their own tasks, just after the last
    /// byte reaches the clients).
    pub async fn assert_table_empties(&self) {
        assert!(
            eventually(|| self.flights() == 0).await,
            "flight table still holds {} flights",
            self.flights()
        );
    }
}

/// Waits (bounded by [`PATIENCE`]) until `condition` holds. For state that has no event to
/// wait on, such as a counter inside the proxy.
pub async fn eventually(condition: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    condition()
}

/// Waits (bounded by [`PATIENCE`]) until the future that `condition` returns resolves to true, for
/// conditions that need a request to check (a scrape, a probe).
pub async fn eventually_async<F, Fut>(mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    condition().await
}

/// The value of the metric sample `series` (name and labels exactly as exposed) in a
/// Prometheus text exposition, or 0 when it is absent.
pub fn metric(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|value| value.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts every panic in this test process (nextest runs each test in its own), so a test can
/// tell that no proxy task panicked, even where tokio caught the panic and carried on.
fn count_panics() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            default(info);
        }));
    });
}

/// Panics so far in this process.
pub fn panics() -> usize {
    PANICS.load(std::sync::atomic::Ordering::SeqCst)
}

pub fn raise_fd_limit() {
    if let Ok((_, hard)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
        let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard);
    }
}

/// A whole response as a client saw it; `body` is `Err` when the connection was aborted
/// before the response was complete, and `received` holds the body bytes that arrived before
/// the end (all of them, or those before the abort).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Result<Bytes, String>,
    pub received: Bytes,
    /// The trailer section, when the body ended with one.
    pub trailers: Option<HeaderMap>,
}

impl Reply {
    pub fn outcome(&self) -> &str {
        self.headers
            .get("x-coalesce")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn body(&self) -> &Bytes {
        self.body.as_ref().expect("complete body")
    }

    /// The value of header `name`, if it has one that is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

pub async fn connect(addr: SocketAddr) -> Sender {
    let stream = TcpStream::connect(addr).await.expect("connect to proxy");
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    sender
}

pub type H2Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// One HTTP/2 (prior knowledge) connection to the proxy; clone the sender for more streams.
pub async fn connect_h2(addr: SocketAddr) -> H2Sender {
    let stream = TcpStream::connect(addr).await.expect("connect to proxy");
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(connection);
    sender
}

pub fn request(
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(path);
    // `proxy.test`, unless the test names a host of its own.
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        builder = builder.header("host", "proxy.test");
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(body)).expect("valid request")
}

/// Sends a request and returns the head, leaving the body to read.
pub async fn send_head(
    sender: &mut Sender,
    request: Request<Full<Bytes>>,
) -> http::Response<Incoming> {
    tokio::time::timeout(PATIENCE, sender.send_request(request))
        .await
        .expect("response head in time")
        .expect("response head")
}

pub async fn read_reply(response: http::Response<Incoming>) -> Reply {
    let (parts, mut body) = response.into_parts();
    let mut received = bytes::BytesMut::new();
    let mut trailers = None;
    let read = async {
        while let Some(frame) = body.frame().await {
            match frame.map_err(|e| e.to_string())?.into_data() {
                Ok(data) => received.extend_from_slice(&data),
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        Ok::<(), String>(())
    };
    let ended = tokio::time::timeout(PATIENCE, read)
        .await
        .expect("body in time");
    let received = received.freeze();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: ended.map(|()| received.clone()),
        received,
        trailers,
    }
}

pub async fn fetch(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Reply {
    let mut sender = connect(addr).await;
    let response = send_head(&mut sender, request(method, path, headers, body)).await;
    read_reply(response).await
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    fetch(addr, Method::GET, path, &[], Bytes::new()).await
}

/// A GET with request headers.
pub async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    fetch(addr, Method::GET, path, headers, Bytes::new()).await
}

/// `n` clients, each on its own connection, connected first and then released at once.
pub async fn herd(
    addr: SocketAddr,
    n: usize,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Vec<Reply> {
    try_herd(addr, n, method, path, headers)
        .await
        .into_iter()
        .map(|reply| reply.expect("response head"))
        .collect()
}

/// Like [`herd`], but a client whose connection closes before the response head gets `Err`.
/// Connections open a few hundred at a time (as `src/herd.rs` does), so that a large herd
/// does not overflow the listener's backlog and wait a second for a SYN retransmit; the
/// requests are still released all at once.
pub async fn try_herd(
    addr: SocketAddr,
    n: usize,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Vec<Result<Reply, String>> {
    let barrier = Arc::new(Barrier::new(n + 1));
    let connecting = Arc::new(tokio::sync::Semaphore::new(256));
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let barrier = barrier.clone();
            let method = method.clone();
            let path = path.to_owned();
            let headers = headers.clone();
            let connecting = connecting.clone();
            tokio::spawn(async move {
                let permit = connecting.acquire_owned().await;
                let mut sender = tokio::time::timeout(PATIENCE, connect(addr))
                    .await
                    .expect("connected in time");
                drop(permit);
                barrier.wait().await;
                let headers: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(a, b)| (a.as_str(), b.as_str()))
                    .collect();
                let request = request(method, &path, &headers, Bytes::new());
                match tokio::time::timeout(PATIENCE, sender.send_request(request)).await {
                    Err(_) => panic!("no response head in time"),
                    Ok(Err(err)) => Err(err.to_string()),
                    Ok(Ok(response)) => Ok(read_reply(response).await),
                }
            })
        })
        .collect();
    barrier.wait().await;
    let mut replies = Vec::with_capacity(n);
    for task in tasks {
        replies.push(task.await.expect("client task"));
    }
    replies
}

/// How many replies carry each outcome: (leader, follower, pass).
pub fn outcomes(replies: &[Reply]) -> (usize, usize, usize) {
    let count = |o: &str| replies.iter().filter(|r| r.outcome() == o).count();
    (count("leader"), count("follower"), count("pass"))
}

impl Harness {
    /// Waits until `followers` requests in total have joined flights, then opens `gate` at the
    /// origin. Paths that hold their head at the gate (`hold_head=`) cannot finish before every
    /// client of the herd is in, however slowly a loaded machine schedules them.
    pub async fn open_when_followers(&self, followers: u64, gate: &str) {
        assert!(
            eventually(|| self.proxy.stats().snapshot().joined >= followers).await,
            "only {} of {followers} followers joined",
            self.proxy.stats().snapshot().joined
        );
        self.origin.open_gate(gate);
    }

    /// A herd of `n` at `path` (which holds at gate `gate`), released once all have joined.
    pub async fn gated_herd(
        &self,
        n: usize,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        gate: &str,
    ) -> Vec<Reply> {
        let before = self.proxy.stats().snapshot().joined;
        let (replies, ()) = tokio::join!(
            herd(self.addr, n, method, path, headers),
            self.open_when_followers(before + n as u64 - 1, gate)
        );
        replies
    }
}

/// Sends raw bytes on a new connection and returns everything the proxy sends back until it
/// closes the connection.
pub async fn raw_exchange(h: &Harness, bytes: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(h.addr)
        .await
        .expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(bytes).await.expect("send");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}
