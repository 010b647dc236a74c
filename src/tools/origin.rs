//! A small scriptable HTTP/1.1 origin for the demo, the tests and the benchmarks.
//!
//! It is written on raw TCP, not on hyper, so that it can misbehave on purpose: close or reset
//! before the head or mid-body, stall, and notice a proxy that hangs up on it (a cancelled
//! fetch). [`Origin::start_tls`] serves the same over TLS, for `https://` upstreams. Each
//! request scripts its own response through query parameters, so one origin serves every
//! case:
//!
//! | parameter | effect |
//! |---|---|
//! | `delay=MS` | wait before the head (default: [`OriginSettings::delay`]) |
//! | `size=N` | body of N bytes of [`body`] (default: [`OriginSettings::body_size`]) |
//! | `status=N` | response status (default 200) |
//! | `chunked=1` | `Transfer-Encoding: chunked` instead of `Content-Length` |
//! | `chunks=N`, `gap=MS` | write the body in N pieces, MS apart |
//! | `hold_head=NAME` | before the head (and before any `fail`), wait until [`Origin::open_gate`]`(NAME)` |
//! | `hold=NAME` | after the first body piece, wait until [`Origin::open_gate`]`(NAME)` |
//! | `fail=WHAT` | `close_before_head`, `reset_before_head`, `stall_before_head`, `garbage_head`, `huge_head`, `close_mid_body`, `reset_mid_body`, `stall_mid_body` |
//! | `informational=1` | send a `103 Early Hints` before the final head |
//! | `trailers=1` | with `chunked=1`, end the body with a trailer field |
//! | `body_anyway=1` | send the body even on a 204 or 304 (a broken upstream) |
//! | `fail_after=N` | answer 503 once the origin has served more than N requests |
//! | `header=NAME:VALUE` | add a response header (repeatable) |
//! | `hold_rest=NAME` | like `hold_head`, but the first request naming NAME passes without waiting |
//! | `cookie=1` | add `Set-Cookie: id=HIT`, unique per response (unless [`Origin::set_cookies`] turned them off) |
//! | `echo_header=NAME` | the body is `NAME=VALUE` with the request's value of that header |
//!
//! A request with an `Upgrade` header is switched (101) and everything sent on the connection
//! afterwards is echoed back, byte for byte. A request with a body gets its body echoed back. Every response carries `x-origin-hit`,
//! the origin's running request count, so a test can tell which fetch produced it, and
//! `ETag: "v1"`: a request with `If-None-Match: "v1"` gets 304, and one with a single
//! `Range: bytes=A-B` gets 206 with that slice.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// Defaults for requests that do not script their own.
#[derive(Debug, Clone)]
pub struct OriginSettings {
    pub delay: Duration,
    pub body_size: usize,
}

impl Default for OriginSettings {
    fn default() -> Self {
        OriginSettings {
            delay: Duration::ZERO,
            body_size: 64,
        }
    }
}

/// The body the origin sends for `size` bytes: a repeating, position-dependent pattern, so a
/// missing, repeated or reordered chunk shows up in a byte-for-byte comparison.
pub fn body(size: usize) -> Bytes {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-";
    // 63 is prime to the usual chunk sizes, so chunk boundaries never line up with the cycle.
    (0..size).map(|i| ALPHABET[i % ALPHABET.len()]).collect()
}

/// One request as the origin received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// Every value of header `name`, in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).into_iter().next()
    }
}

#[derive(Debug, Default)]
struct Shared {
    settings: Mutex<OriginSettings>,
    hits: AtomicU64,
    /// Connections accepted.
    connections: AtomicU64,
    /// Requests whose client hung up before the response was complete.
    cancelled: AtomicU64,
    requests: Mutex<Vec<RecordedRequest>>,
    /// Gates named by `hold=` that were reached, and those the test opened.
    held: Mutex<HashSet<String>>,
    /// `hold_rest=` gates that let their first request through already.
    passed_once: Mutex<HashSet<String>>,
    /// Requests being answered right now, and the most there ever were at once.
    in_progress: AtomicU64,
    peak_in_progress: AtomicU64,
    no_cookies: std::sync::atomic::AtomicBool,
    opened: Mutex<HashSet<String>>,
    /// Bumped on every event above, so waiters wake without polling.
    events: watch::Sender<()>,
}

impl Shared {
    fn changed(&self) {
        self.events.send_replace(());
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running origin on `127.0.0.1`. Dropping it stops accepting.
#[derive(Debug)]
pub struct Origin {
    addr: SocketAddr,
    /// Whether it speaks TLS ([`Origin::start_tls`]).
    tls: bool,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

/// A connection the origin answers on: plain TCP or TLS over it.
pub trait OriginStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Makes closing the connection send a reset instead of a FIN.
    fn reset_on_close(&self);
}

impl OriginStream for TcpStream {
    fn reset_on_close(&self) {
        let _ = self.set_zero_linger();
    }
}

impl OriginStream for tokio_rustls::server::TlsStream<TcpStream> {
    fn reset_on_close(&self) {
        let _ = self.get_ref().0.set_zero_linger();
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Origin {
    /// Starts on an ephemeral port of 127.0.0.1.
    pub async fn start(settings: OriginSettings) -> std::io::Result<Origin> {
        Origin::start_on("127.0.0.1:0".parse().expect("literal address"), settings).await
    }

    pub async fn start_on(
        address: SocketAddr,
        settings: OriginSettings,
    ) -> std::io::Result<Origin> {
        Origin::listen(address, settings, None).await
    }

    /// Starts on an ephemeral port of 127.0.0.1, speaking HTTPS with `tls` (its certificate
    /// and key). Every script works as over plain TCP; a failed handshake is not a request.
    pub async fn start_tls(
        settings: OriginSettings,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<Origin> {
        let address = "127.0.0.1:0".parse().expect("literal address");
        Origin::start_tls_on(address, settings, tls).await
    }

    pub async fn start_tls_on(
        address: SocketAddr,
        settings: OriginSettings,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<Origin> {
        Origin::listen(address, settings, Some(TlsAcceptor::from(tls))).await
    }

    async fn listen(
        address: SocketAddr,
        settings: OriginSettings,
        tls: Option<TlsAcceptor>,
    ) -> std::io::Result<Origin> {
        let listener = TcpListener::bind(address).await?;
        let addr = listener.local_addr()?;
        let speaks_tls = tls.is_some();
        let shared = Arc::new(Shared {
            settings: Mutex::new(settings),
            ..Shared::default()
        });
        let accept = tokio::spawn({
            let shared = shared.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    shared.connections.fetch_add(1, Ordering::SeqCst);
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    match tls.clone() {
                        None => drop(tokio::spawn(serve_connection(stream, shared))),
                        Some(acceptor) => drop(tokio::spawn(async move {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve_connection(stream, shared).await;
                            }
                        })),
                    }
                }
            }
        });
        Ok(Origin {
            addr,
            tls: speaks_tls,
            shared,
            accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, or `https://` for a TLS origin.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn set_delay(&self, delay: Duration) {
        lock(&self.shared.settings).delay = delay;
    }

    /// Requests received so far.
    pub fn hits(&self) -> u64 {
        self.shared.hits.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Requests whose client hung up before the whole response was sent.
    pub fn cancelled(&self) -> u64 {
        self.shared.cancelled.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Requests whose target starts with `prefix`.
    pub fn hits_for(&self, prefix: &str) -> usize {
        lock(&self.shared.requests)
            .iter()
            .filter(|r| r.target.starts_with(prefix))
            .count()
    }

    /// The most requests the origin was answering at the same moment.
    pub fn peak_concurrency(&self) -> u64 {
        self.shared.peak_in_progress.load(Ordering::SeqCst)
    }

    /// Turns `cookie=1` on (the default) or off for later responses.
    pub fn set_cookies(&self, on: bool) {
        self.shared.no_cookies.store(!on, Ordering::SeqCst);
    }

    /// Lets every response held at gate `name` continue.
    pub fn open_gate(&self, name: &str) {
        lock(&self.shared.opened).insert(name.to_owned());
        self.shared.changed();
    }

    /// Whether some response has reached gate `name` (its first body piece is out).
    pub fn reached(&self, name: &str) -> bool {
        lock(&self.shared.held).contains(name)
    }

    /// Waits until `condition` holds, waking on every origin event. Bounded by `timeout`;
    /// returns whether the condition held.
    pub async fn wait_until(&self, timeout: Duration, condition: impl Fn(&Origin) -> bool) -> bool {
        let mut events = self.shared.events.subscribe();
        let wait = async {
            loop {
                if condition(self) {
                    return;
                }
                if events.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok() && condition(self)
    }
}

/// A parsed request head plus its body.
struct Parsed {
    request: RecordedRequest,
    keep_alive: bool,
}

async fn serve_connection(mut stream: impl OriginStream, shared: Arc<Shared>) {
    let mut buffer = Vec::with_capacity(4096);
    loop {
        let Some(parsed) = read_request(&mut stream, &mut buffer).await else {
            return;
        };
        let keep_alive = parsed.keep_alive;
        let now = shared.in_progress.fetch_add(1, Ordering::SeqCst) + 1;
        shared.peak_in_progress.fetch_max(now, Ordering::SeqCst);
        let responded = respond(&mut stream, parsed.request, &shared).await;
        shared.in_progress.fetch_sub(1, Ordering::SeqCst);
        match responded {
            Some(()) if keep_alive => continue,
            _ => return,
        }
    }
}

/// Reads one request (head and body). `None` when the peer closed or sent garbage.
async fn read_request(stream: &mut impl OriginStream, buffer: &mut Vec<u8>) -> Option<Parsed> {
    loop {
        if let Some(head_end) = find(buffer, b"\r\n\r\n") {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut request = httparse::Request::new(&mut headers);
            request.parse(&buffer[..head_end + 4]).ok()?;
            let method = request.method?.to_owned();
            let target = request.path?.to_owned();
            let version_11 = request.version == Some(1);
            let headers: Vec<(String, String)> = request
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            buffer.drain(..head_end + 4);
            let recorded = RecordedRequest {
                method,
                target,
                headers,
                body: Vec::new(),
            };
            let connection = recorded.header("connection").map(str::to_ascii_lowercase);
            let keep_alive = match connection.as_deref() {
                Some("close") => false,
                Some("keep-alive") => true,
                _ => version_11,
            };
            let chunked = recorded
                .header("transfer-encoding")
                .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
            let length: usize = recorded
                .header("content-length")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let body = if chunked {
                loop {
                    if let Some((body, used)) = decode_chunked(buffer) {
                        buffer.drain(..used);
                        break body;
                    }
                    read_more(stream, buffer).await?;
                }
            } else {
                while buffer.len() < length {
                    read_more(stream, buffer).await?;
                }
                buffer.drain(..length).collect()
            };
            return Some(Parsed {
                request: RecordedRequest { body, ..recorded },
                keep_alive,
            });
        }
        read_more(stream, buffer).await?;
    }
}

async fn read_more(stream: &mut impl OriginStream, buffer: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buffer.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Decodes a complete chunked body at the start of `buffer`: the body and the bytes used, or
/// `None` if more input is needed.
fn decode_chunked(buffer: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let line_end = at + find(&buffer[at..], b"\r\n")?;
        let size_text = std::str::from_utf8(&buffer[at..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Skip trailers up to the empty line.
            loop {
                let end = at + find(&buffer[at..], b"\r\n")?;
                let empty = end == at;
                at = end + 2;
                if empty {
                    return Some((body, at));
                }
            }
        }
        if buffer.len() < at + size + 2 {
            return None;
        }
        body.extend_from_slice(&buffer[at..at + size]);
        at += size + 2;
    }
}

/// What a request asked the origin to do.
#[derive(Debug, Default)]
struct Script {
    delay: Option<Duration>,
    size: Option<usize>,
    status: Option<u16>,
    chunked: bool,
    chunks: usize,
    gap: Duration,
    hold_head: Option<String>,
    hold_rest: Option<String>,
    hold: Option<String>,
    fail: Option<String>,
    headers: Vec<(String, String)>,
    cookie: bool,
    echo_header: Option<String>,
    informational: bool,
    trailers: bool,
    body_anyway: bool,
    fail_after: Option<u64>,
}

impl Script {
    fn parse(target: &str) -> Script {
        let mut script = Script {
            chunks: 1,
            ..Script::default()
        };
        let query = target.split_once('?').map_or("", |(_, q)| q);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let millis = || value.parse().ok().map(Duration::from_millis);
            match name {
                "delay" => script.delay = millis(),
                "size" => script.size = value.parse().ok(),
                "status" => script.status = value.parse().ok(),
                "chunked" => script.chunked = value == "1",
                "chunks" => script.chunks = value.parse().unwrap_or(1).max(1),
                "gap" => script.gap = millis().unwrap_or_default(),
                "hold" => script.hold = Some(value.to_owned()),
                "hold_head" => script.hold_head = Some(value.to_owned()),
                "hold_rest" => script.hold_rest = Some(value.to_owned()),
                "cookie" => script.cookie = value == "1",
                "informational" => script.informational = value == "1",
                "trailers" => script.trailers = value == "1",
                "body_anyway" => script.body_anyway = value == "1",
                "fail_after" => script.fail_after = value.parse().ok(),
                "echo_header" => script.echo_header = Some(value.to_owned()),
                "fail" => script.fail = Some(value.to_owned()),
                "header" => {
                    if let Some((n, v)) = value.split_once(':') {
                        script.headers.push((n.to_owned(), v.replace("%20", " ")));
                    }
                }
                _ => {}
            }
        }
        script
    }

    fn fails(&self, what: &str) -> bool {
        self.fail.as_deref() == Some(what)
    }
}

/// `bytes=A-B` or `bytes=A-` (a single range) as `(A, Some(B))` or `(A, None)`.
fn parse_range(value: &str) -> Option<(usize, Option<usize>)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let first = first.trim().parse().ok()?;
    let last = match last.trim() {
        "" => None,
        last => Some(last.parse().ok()?),
    };
    Some((first, last))
}

/// Waits until the peer closes its side (or errors), discarding anything it sends.
async fn peer_closed(stream: &mut impl OriginStream) {
    let mut sink = [0u8; 1024];
    while let Ok(n) = stream.read(&mut sink).await {
        if n == 0 {
            return;
        }
    }
}

/// Sleeps for `delay`, unless the peer hangs up first (then `None`).
async fn wait_or_hangup(
    stream: &mut impl OriginStream,
    delay: Duration,
    shared: &Shared,
) -> Option<()> {
    tokio::select! {
        () = tokio::time::sleep(delay) => Some(()),
        () = peer_closed(stream) => {
            shared.cancelled.fetch_add(1, Ordering::SeqCst);
            shared.changed();
            None
        }
    }
}

/// Marks gate `name` as reached, then waits until the test opens it. `None` if the peer hung
/// up meanwhile.
async fn wait_at_gate(stream: &mut impl OriginStream, name: &str, shared: &Shared) -> Option<()> {
    lock(&shared.held).insert(name.to_owned());
    shared.changed();
    let mut events = shared.events.subscribe();
    while !lock(&shared.opened).contains(name) {
        tokio::select! {
            changed = events.changed() => changed.ok()?,
            () = peer_closed(stream) => {
                shared.cancelled.fetch_add(1, Ordering::SeqCst);
                shared.changed();
                return None;
            }
        }
    }
    Some(())
}

/// Writes to the client; a failed write means it hung up mid-response, which counts as a
/// cancellation.
async fn send(stream: &mut impl OriginStream, bytes: &[u8], shared: &Shared) -> Option<()> {
    if stream.write_all(bytes).await.is_err() {
        shared.cancelled.fetch_add(1, Ordering::SeqCst);
        shared.changed();
        return None;
    }
    Some(())
}

/// Writes the scripted response. `None` means the connection must close.
async fn respond(
    stream: &mut impl OriginStream,
    request: RecordedRequest,
    shared: &Shared,
) -> Option<()> {
    let hit = shared.hits.fetch_add(1, Ordering::SeqCst) + 1;
    let script = Script::parse(&request.target);
    let head_only = request.method == "HEAD";
    let echo = if let Some(name) = &script.echo_header {
        let value = request.header(name).unwrap_or("");
        Some(Bytes::from(format!("{name}={value}")))
    } else {
        (!request.body.is_empty()).then(|| Bytes::from(request.body.clone()))
    };
    let not_modified = request.header("if-none-match") == Some("\"v1\"");
    let upgrade = request.header("upgrade").map(str::to_owned);
    let range = request.header("range").and_then(parse_range);
    lock(&shared.requests).push(request);
    shared.changed();

    if let Some(protocol) = &upgrade {
        let head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: {protocol}\r\n\r\n"
        );
        send(stream, head.as_bytes(), shared).await?;
        let mut buffer = [0u8; 8192];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => send(stream, &buffer[..n], shared).await?,
            }
        }
    }
    let settings = lock(&shared.settings).clone();
    let delay = script.delay.unwrap_or(settings.delay);
    if let Some(gate) = &script.hold_head {
        wait_at_gate(stream, gate, shared).await?;
    }
    if let Some(gate) = &script.hold_rest {
        let first = lock(&shared.passed_once).insert(gate.clone());
        if !first {
            wait_at_gate(stream, gate, shared).await?;
        }
    }
    if script.fails("close_before_head") {
        return None;
    }
    if script.fails("reset_before_head") {
        stream.reset_on_close();
        return None;
    }
    if script.fails("stall_before_head") {
        wait_or_hangup(stream, Duration::from_secs(3600), shared).await;
        return None;
    }
    if !delay.is_zero() {
        wait_or_hangup(stream, delay, shared).await?;
    }
    if script.fails("garbage_head") {
        let _ = stream.write_all(b"HELLO THERE, NOT HTTP\r\n\r\n").await;
        return None;
    }
    if script.fails("huge_head") {
        let filler = "x".repeat(1 << 20);
        let head = format!("HTTP/1.1 200 OK\r\nx-filler: {filler}\r\ncontent-length: 0\r\n\r\n");
        let _ = stream.write_all(head.as_bytes()).await;
        return None;
    }
    if script.informational {
        send(
            stream,
            b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n",
            shared,
        )
        .await?;
    }

    let mut body = echo.unwrap_or_else(|| body(script.size.unwrap_or(settings.body_size)));
    let mut status = script.status.unwrap_or(200);
    if script.fail_after.is_some_and(|n| hit > n) {
        status = 503;
    }
    let full_length = body.len();
    let mut content_range = None;
    if status == 200 && not_modified {
        status = 304;
    } else if status == 200 {
        if let Some((first, last)) = range {
            let last = last
                .unwrap_or(full_length.saturating_sub(1))
                .min(full_length.saturating_sub(1));
            if first <= last {
                status = 206;
                body = body.slice(first..=last);
                content_range = Some(format!("bytes {first}-{last}/{full_length}"));
            }
        }
    }
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown");
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/octet-stream\r\nx-origin-hit: {hit}\r\n"
    );
    head.push_str("etag: \"v1\"\r\n");
    if let Some(range) = content_range {
        head.push_str(&format!("content-range: {range}\r\n"));
    }
    if script.cookie && !shared.no_cookies.load(Ordering::SeqCst) {
        head.push_str(&format!("set-cookie: id={hit}; Path=/\r\n"));
    }
    for (name, value) in &script.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let bodiless = head_only || status == 204 || status == 304 || (100..200).contains(&status);
    if status == 304 {
        head.push_str("\r\n");
    } else if script.chunked {
        head.push_str("transfer-encoding: chunked\r\n\r\n");
    } else {
        head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    }
    send(stream, head.as_bytes(), shared).await?;
    if bodiless && (head_only || !script.body_anyway) {
        return Some(());
    }

    let mid_body_fail = script
        .fail
        .as_deref()
        .is_some_and(|f| f.ends_with("_mid_body"));
    let pieces = if mid_body_fail || script.hold.is_some() {
        script.chunks.max(2)
    } else {
        script.chunks
    };
    let piece_size = body.len().div_ceil(pieces).max(1);
    for (index, piece) in body.chunks(piece_size).enumerate() {
        if index > 0 && !script.gap.is_zero() {
            wait_or_hangup(stream, script.gap, shared).await?;
        }
        if script.chunked {
            let framed = [format!("{:x}\r\n", piece.len()).as_bytes(), piece, b"\r\n"].concat();
            send(stream, &framed, shared).await?;
        } else {
            send(stream, piece, shared).await?;
        }
        stream.flush().await.ok()?;
        if index == 0 {
            if script.fails("close_mid_body") {
                return None;
            }
            if script.fails("reset_mid_body") {
                stream.reset_on_close();
                return None;
            }
            if script.fails("stall_mid_body") {
                wait_or_hangup(stream, Duration::from_secs(3600), shared).await;
                return None;
            }
            if let Some(gate) = &script.hold {
                wait_at_gate(stream, gate, shared).await?;
            }
        }
    }
    if script.chunked && script.trailers {
        send(stream, b"0\r\nx-checksum: 42\r\n\r\n", shared).await?;
    } else if script.chunked {
        send(stream, b"0\r\n\r\n", shared).await?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_decode_only_when_complete() {
        let wire = b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        let (body, used) = decode_chunked(wire).expect("complete");
        assert_eq!(body, b"abcde");
        assert_eq!(&wire[used..], b"NEXT");
        assert!(decode_chunked(&wire[..10]).is_none());
    }

    #[test]
    fn scripts_parse_from_the_query() {
        let s = Script::parse("/x?delay=5&size=10&chunked=1&chunks=3&header=a:b%20c&fail=x");
        assert_eq!(s.delay, Some(Duration::from_millis(5)));
        assert_eq!(s.size, Some(10));
        assert!(s.chunked);
        assert_eq!(s.chunks, 3);
        assert_eq!(s.headers, vec![("a".to_owned(), "b c".to_owned())]);
        assert!(s.fails("x"));
    }
}
