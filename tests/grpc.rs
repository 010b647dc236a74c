//! gRPC through the proxy, with a real gRPC implementation on both sides: grpcio's server and
//! client (`tests/grpc/peer.py`, in the Python that `.ci/run` sets up under `target/`). Every
//! call kind, status codes with their messages and trailing metadata, deadlines, TLS with
//! ALPN h2, and unary calls that coalesce on a route that opts in. The bar is the same call
//! made straight to the server: through the proxy, the client must see exactly that.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};

use coalesce_proxy::tools::origin::OriginSettings;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::tls::TestCa;
use crate::util::*;

/// A Python with grpcio: `GRPC_PYTHON`, the one `.ci/run` installs into `target/ci-venv`, or
/// `python3`. `None` (the test is skipped) when none has it, except under CI, which installs
/// it: there a missing grpcio fails the test.
fn grpc_python() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        std::env::var_os("GRPC_PYTHON").map(PathBuf::from),
        Some(root.join("target/ci-venv/bin/python")),
        Some(PathBuf::from("python3")),
    ];
    let found = candidates.into_iter().flatten().find(|python| {
        Command::new(python)
            .args(["-c", "import grpc"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs grpcio for the gRPC tests (see .ci/run)"
        );
        eprintln!("skipped: no Python with grpcio here (`bash .ci/run` installs it)");
    }
    found
}

fn peer_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/grpc/peer.py")
}

/// Lines a child writes on stdout, read on a thread of their own.
fn stdout_lines(child: &mut Child) -> UnboundedReceiver<String> {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    lines
}

async fn next_line(lines: &mut UnboundedReceiver<String>) -> String {
    tokio::time::timeout(PATIENCE, lines.recv())
        .await
        .expect("a line in time")
        .expect("the peer is alive")
}

/// grpcio's server for `test.Echo` (see `peer.py`), killed when dropped.
struct GrpcServer {
    child: Child,
    stdin: ChildStdin,
    lines: UnboundedReceiver<String>,
    port: u16,
}

impl GrpcServer {
    /// With `tls`, it serves TLS with that certificate and key.
    async fn start(python: &PathBuf, tls: Option<&(TempFile, TempFile)>) -> GrpcServer {
        let mut command = Command::new(python);
        command.arg(peer_script()).arg("server");
        if let Some((cert, key)) = tls {
            command.arg("--tls").arg(&cert.0).arg(&key.0);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the gRPC server");
        let stdin = child.stdin.take().expect("stdin");
        let mut lines = stdout_lines(&mut child);
        let first = next_line(&mut lines).await;
        let port = first
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the server's port, not {first:?}"));
        GrpcServer {
            child,
            stdin,
            lines,
            port,
        }
    }

    fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").expect("write to the server");
        self.stdin.flush().expect("flush");
    }

    /// Waits for the line the server prints that starts with `prefix`.
    async fn wait_for(&mut self, prefix: &str) -> String {
        loop {
            let line = next_line(&mut self.lines).await;
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    /// Opens the gate `gate` that a `Held*` method waits at.
    async fn release(&mut self, gate: &str) {
        self.send(&format!("release {gate}"));
        self.wait_for("released").await;
    }

    /// Calls per method, and the cancellations it saw.
    async fn stats(&mut self) -> Value {
        self.send("stats");
        let line = self.wait_for("{").await;
        serde_json::from_str(&line).expect("stats JSON")
    }

    async fn calls(&mut self, method: &str) -> u64 {
        self.stats().await["calls"][method].as_u64().unwrap_or(0)
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A grpcio client running `scenario` against `target`, started: its output arrives on the
/// returned lines (the result is the last).
fn start_client(
    python: &PathBuf,
    target: &str,
    scenario: &str,
    arg: Option<&str>,
    ca: Option<&TestCa>,
) -> (Child, UnboundedReceiver<String>) {
    let mut command = Command::new(python);
    command
        .arg(peer_script())
        .args(["client", target, scenario]);
    command.args(arg);
    if let Some(ca) = ca {
        command.arg("--tls").arg(ca.pem_path());
    }
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the gRPC client");
    let lines = stdout_lines(&mut child);
    (child, lines)
}

/// The result of `scenario` run by a grpcio client against `target`.
async fn call(
    python: &PathBuf,
    target: &str,
    scenario: &str,
    arg: Option<&str>,
    ca: Option<&TestCa>,
) -> Value {
    let (mut child, mut lines) = start_client(python, target, scenario, arg, ca);
    let result = finish_client(&mut child, &mut lines).await;
    result
}

async fn finish_client(child: &mut Child, lines: &mut UnboundedReceiver<String>) -> Value {
    let mut last = String::new();
    while let Ok(Some(line)) = tokio::time::timeout(PATIENCE, lines.recv()).await {
        last = line;
    }
    let _ = child.kill();
    let _ = child.wait();
    serde_json::from_str(&last).unwrap_or_else(|_| panic!("a JSON result, not {last:?}"))
}

/// A proxy with one HTTP/2 upstream, the gRPC server, and `routes` before the catch-all
/// route `all`; `upstream_tls` and `server_tls` are added to the upstream's and the
/// server's tables.
async fn proxy_for(
    port: u16,
    scheme: &str,
    upstream_tls: &str,
    server_tls: &str,
    routes: &str,
) -> Harness {
    Harness::start_text(OriginSettings::default(), |_| {
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "2s"
workers = 2
{server_tls}

[log]
stats_interval = "0s"

[upstreams.grpc]
url = "{scheme}://127.0.0.1:{port}"
http2 = true
{upstream_tls}

{routes}

[[routes]]
name = "all"
path_prefix = "/"
upstream = "grpc"
"#
        )
    })
    .await
}

const SCENARIOS: [&str; 5] = ["unary", "error", "stream", "client_stream", "bidi"];

/// Every scenario through the proxy gives the client exactly what the server gives it
/// directly: messages, status code, `grpc-message`, trailing metadata (text and `-bin`).
async fn assert_same_as_direct(python: &PathBuf, direct: &str, proxied: &str, ca: Option<&TestCa>) {
    for scenario in SCENARIOS {
        let straight = call(python, direct, scenario, None, ca).await;
        let through = call(python, proxied, scenario, None, ca).await;
        assert_eq!(through, straight, "{scenario} through the proxy");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_call_passes_through_h2c_intact_trailers_and_all() {
    let Some(python) = grpc_python() else { return };
    let server = GrpcServer::start(&python, None).await;
    let h = proxy_for(server.port, "http", "", "", "").await;
    let (direct, proxied) = (format!("127.0.0.1:{}", server.port), h.addr.to_string());

    let unary = call(&python, &proxied, "unary", Some("hello"), None).await;
    assert_eq!(unary["code"], "OK");
    assert_eq!(unary["response"], "got:hello");
    assert_eq!(
        unary["trailing"],
        json!([["x-trail", "t-hello"], ["x-trail-bin", "b64:AAH/"]])
    );
    // An error before any message is a trailers-only response: its head is the client's
    // trailing metadata, which must hold what the server sent and nothing of the proxy's.
    let error = call(&python, &proxied, "error", None, None).await;
    assert_eq!(error["code"], "NOT_FOUND");
    assert_eq!(error["details"], "no such thing: thing-7");
    assert_eq!(
        error["trailing"],
        json!([["x-detail", "none here"], ["x-detail-bin", "b64:3q2+7w=="]])
    );
    let stream = call(&python, &proxied, "stream", None, None).await;
    assert_eq!(stream["code"], "OK");
    assert_eq!(stream["messages"].as_array().map(Vec::len), Some(100));
    assert_eq!(stream["trailing"], json!([["x-listed", "100"]]));

    assert_same_as_direct(&python, &direct, &proxied, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_ends_the_call_at_the_deadline_and_the_server_sees_it_cancelled() {
    let Some(python) = grpc_python() else { return };
    let mut server = GrpcServer::start(&python, None).await;
    let h = proxy_for(server.port, "http", "", "", "").await;
    let result = call(&python, &h.addr.to_string(), "deadline", None, None).await;
    assert_eq!(result["code"], "DEADLINE_EXCEEDED");
    // The server takes 3 s; the client's deadline is 1 s.
    assert!(result["elapsed"].as_f64().unwrap() < 2.5, "{result}");
    // The client's RST_STREAM reaches the server as a cancellation of its call (the proxy
    // resets its upstream stream), not as a call that runs on to its end.
    server.wait_for("cancelled Slow").await;
    // The server's own deadline (grpc-timeout reaches it) races the client's reset: the
    // proxy records a call cancelled before its head, or a response cut after it.
    h.wait_responses_done(&["cancelled", "pass"], 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_client_cancels_is_logged_and_counted_as_cancelled() {
    let Some(python) = grpc_python() else { return };
    let mut server = GrpcServer::start(&python, None).await;
    let h = proxy_for(server.port, "http", "", "", "").await;
    let mut client = Command::new(&python)
        .arg(peer_script())
        .args(["client", &h.addr.to_string(), "cancel"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the gRPC client");
    let mut lines = stdout_lines(&mut client);
    server.wait_for("started Slow").await;
    let mut stdin = client.stdin.take().expect("stdin");
    writeln!(stdin, "cancel").expect("tell the client to cancel");
    let result = finish_client(&mut client, &mut lines).await;
    assert_eq!(result["cancelled"], true);
    // The client's RST_STREAM (CANCEL) reaches the server as the end of its call.
    server.wait_for("cancelled Slow").await;
    // And the proxy logs and counts it, as nginx's 499.
    h.wait_responses_done(&["cancelled"], 1).await;
    assert_eq!(h.proxy.stats().snapshot().cancelled, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_with_alpn_h2_on_both_hops() {
    let Some(python) = grpc_python() else { return };
    let ca = TestCa::new();
    let files = ca.server_pem_files(&["localhost", "127.0.0.1"], false);
    let server = GrpcServer::start(&python, Some(&files)).await;
    let server_tls = format!(
        "tls = {{ cert_file = {:?}, key_file = {:?} }}",
        files.0 .0.display().to_string(),
        files.1 .0.display().to_string()
    );
    let upstream_tls = format!("tls = {{ ca_file = {:?} }}", ca.pem_path());
    let h = proxy_for(server.port, "https", &upstream_tls, &server_tls, "").await;
    let (direct, proxied) = (format!("127.0.0.1:{}", server.port), h.addr.to_string());
    let unary = call(&python, &proxied, "unary", Some("secret"), Some(&ca)).await;
    assert_eq!(unary["response"], "got:secret");
    assert_same_as_direct(&python, &direct, &proxied, Some(&ca)).await;
}

/// The route of the coalescing tests: unary `Held*` calls share.
const HELD_ROUTE: &str = r#"
[[routes]]
name = "held"
path_prefix = "/test.Echo/Held"
upstream = "grpc"
coalesce = { methods = ["POST"], body_max = "64KiB" }
"#;

/// A herd of `n` grpcio calls of `scenario`, held at the server's gate `gate` until
/// `joiners` have joined a flight, and their results.
async fn held_herd(
    python: &PathBuf,
    h: &Harness,
    server: &mut GrpcServer,
    (scenario, gate): (&str, &str),
    n: usize,
    joiners: u64,
) -> Vec<Value> {
    let before = h.proxy.stats().snapshot().joined;
    let (mut child, mut lines) = start_client(
        python,
        &h.addr.to_string(),
        scenario,
        Some(&n.to_string()),
        None,
    );
    assert!(
        eventually(|| h.proxy.stats().snapshot().joined >= before + joiners).await,
        "only {} joined",
        h.proxy.stats().snapshot().joined - before
    );
    server.release(gate).await;
    let result = finish_client(&mut child, &mut lines).await;
    let results = result["results"].as_array().expect("results").clone();
    assert_eq!(results.len(), n);
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_unary_calls_coalesce_and_every_caller_gets_the_trailers() {
    let Some(python) = grpc_python() else { return };
    let mut server = GrpcServer::start(&python, None).await;
    let h = proxy_for(server.port, "http", "", "", HELD_ROUTE).await;

    // grpcio sends no content-length: the body is read up to body_max to be keyed.
    let results = held_herd(&python, &h, &mut server, ("herd_same", "held"), 50, 49).await;
    for result in &results {
        assert_eq!(result["code"], "OK", "{result}");
        assert_eq!(result["response"], "held:same");
        assert_eq!(result["trailing"], json!([["x-trail", "held-same"]]));
    }
    assert_eq!(server.calls("Held").await, 1);

    // Different messages are different keys: each call reaches the server, with its answer.
    let results = held_herd(&python, &h, &mut server, ("herd_different", "held"), 50, 0).await;
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result["code"], "OK", "{result}");
        assert_eq!(result["response"], format!("held:msg-{i}"));
        assert_eq!(
            result["trailing"],
            json!([["x-trail", format!("held-msg-{i}")]])
        );
    }
    assert_eq!(server.calls("Held").await, 51);
    h.assert_table_empties().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_error_counts_as_an_error_for_share_errors() {
    let Some(python) = grpc_python() else { return };
    let mut server = GrpcServer::start(&python, None).await;
    let route = HELD_ROUTE.replace("body_max", "share_errors = false, body_max");
    let h = proxy_for(server.port, "http", "", "", &route).await;

    // A trailers-only UNAVAILABLE (HTTP 200): under share_errors = false its followers do not
    // take it; they elect a new leader once, whose answer they then share.
    let results = held_herd(&python, &h, &mut server, ("herd_failing", "fail"), 20, 19).await;
    for result in &results {
        assert_eq!(result["code"], "UNAVAILABLE", "{result}");
        assert_eq!(result["details"], "try again");
    }
    let failing = server.calls("HeldFail").await;
    assert!((2..=20).contains(&failing), "{failing} calls");

    // The same when the error comes in the trailers, after a message: the followers wait for
    // the trailers before they take the response.
    let results = held_herd(
        &python,
        &h,
        &mut server,
        ("herd_failing_late", "late"),
        20,
        19,
    )
    .await;
    for result in &results {
        assert_eq!(result["code"], "UNAVAILABLE", "{result}");
    }
    let failing = server.calls("HeldListFail").await;
    assert!((2..=20).contains(&failing), "{failing} calls");
    h.assert_table_empties().await;
}

/// A unary `Get` call framed by hand over HTTP/1.1 (gRPC's length-prefixed message).
fn http1_grpc_request() -> Vec<u8> {
    let message = b"\0\0\0\0\x05hello";
    let mut request = format!(
        "POST /test.Echo/Get HTTP/1.1\r\nhost: grpc.test\r\ncontent-type: application/grpc\r\n\
         te: trailers\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        message.len()
    )
    .into_bytes();
    request.extend_from_slice(message);
    request
}

/// An HTTP/1.1 client that sends `TE: trailers` gets the call's status in chunked trailers
/// (RFC 9112 §7.1.2), though the gRPC server, speaking HTTP/2, declared none. (One that does
/// not ask is refused by grpc-core, which wants `TE: trailers`; `faults::early_hints_and_*`
/// shows such a client gets no trailers, RFC 9110 §6.5.1.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_that_asks_for_trailers_gets_the_grpc_status_in_them() {
    let Some(python) = grpc_python() else { return };
    let server = GrpcServer::start(&python, None).await;
    let h = proxy_for(server.port, "http", "", "", "").await;

    let answer = raw_exchange(&h, &http1_grpc_request()).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.contains("\r\ntransfer-encoding: chunked\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("\r\ntrailer: grpc-status, grpc-message, grpc-status-details-bin\r\n"),
        "{answer}"
    );
    // The message, then the last chunk and the trailer section with the status.
    let message = "E\r\n\0\0\0\0\x09got:hello\r\n";
    assert!(answer.contains(message), "{answer:?}");
    assert!(
        answer.ends_with("\r\n0\r\ngrpc-status: 0\r\ngrpc-message: \r\n\r\n"),
        "{answer:?}"
    );
}
