//! Faults injected for real, upstream and client side. Each case checks the affected clients'
//! status (or an aborted connection), that other clients are untouched, and that the flight
//! table, the gauges, the proxy's tasks and its file descriptors return to where they were.

use std::time::Duration;

use bytes::Bytes;
use coalesce_proxy::tools::origin::{self, OriginSettings};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::*;

/// Open file descriptors of this (test) process, which hosts the proxy.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// What must come back after every fault: no flights, no waiting followers, and the tasks and
/// descriptors the harness had before (client connections closed, upstream connections back
/// in the pool or closed).
struct Baseline {
    fds: usize,
    tasks: usize,
}

impl Baseline {
    /// Counts once the harness is fully up: one request through it first, so that every
    /// long-lived task (accept loops, pool housekeeping) already exists.
    async fn take(h: &Harness) -> Baseline {
        assert_eq!(get(h.addr, "/warm-up?size=1").await.status, StatusCode::OK);
        h.assert_table_empties().await;
        Baseline {
            fds: open_fds(),
            tasks: alive_tasks(),
        }
    }

    async fn assert_restored(&self, h: &Harness) {
        h.assert_table_empties().await;
        assert!(
            eventually(|| alive_tasks() <= self.tasks && open_fds() <= self.fds).await,
            "tasks {} (were {}), fds {} (were {})",
            alive_tasks(),
            self.tasks,
            open_fds(),
            self.fds
        );
        assert_eq!(panics(), 0, "something panicked");
        let metrics = h.proxy.render_metrics();
        assert!(metrics
            .lines()
            .any(|l| l == "coalesce_proxy_followers_waiting 0"));
        assert!(metrics
            .lines()
            .any(|l| l == "coalesce_proxy_flights_in_flight 0"));
    }
}

/// A harness whose idle upstream connections are not kept, so descriptor counts settle.
async fn harness() -> Harness {
    Harness::start_with(OriginSettings::default(), "pool_max_idle = 0", "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_upstream_heads_give_502_to_the_whole_flight() {
    let h = harness().await;
    let baseline = Baseline::take(&h).await;
    for fail in ["close_before_head", "garbage_head", "huge_head"] {
        let path = format!("/broken/{fail}?fail={fail}&hold_head={fail}");
        let replies = h.gated_herd(10, Method::GET, &path, &[], fail).await;
        for reply in &replies {
            assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{fail}");
        }
        assert_eq!(outcomes(&replies), (1, 9, 0), "{fail}");
        assert_eq!(h.origin.hits_for(&format!("/broken/{fail}?")), 1, "{fail}");
    }
    // Another key is untouched.
    assert_eq!(get(h.addr, "/fine?size=10").await.body(), &origin::body(10));
    baseline.assert_restored(&h).await;
}

/// The 103 Early Hints an upstream sends before its final head are not forwarded (hyper's
/// server cannot send interim responses), and neither are trailers (an HTTP/1.1 client may
/// not accept them): the client gets exactly one response, the final one, with the whole
/// body and a clean end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_hints_and_trailers_are_dropped_and_the_response_is_intact() {
    let h = harness().await;
    let baseline = Baseline::take(&h).await;
    let answer = raw_exchange(
        &h,
        b"GET /early?informational=1&size=100 HTTP/1.1\r\nhost: proxy.test\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert!(
        !answer.contains("103") && !answer.contains("link:"),
        "{answer}"
    );
    let body = String::from_utf8(origin::body(100).to_vec()).unwrap();
    assert!(answer.ends_with(&format!("\r\n\r\n{body}")), "{answer}");

    let answer = raw_exchange(
        &h,
        b"GET /trailing?chunked=1&chunks=3&trailers=1&size=3000 HTTP/1.1\r\nhost: proxy.test\r\nte: trailers\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.ends_with("\r\n0\r\n\r\n"),
        "a clean last chunk: {answer}"
    );
    assert!(!answer.contains("x-checksum"), "{answer}");

    // A herd over the same trailer-carrying response gets every byte.
    let replies = h
        .gated_herd(
            5,
            Method::GET,
            "/trailing?chunked=1&chunks=3&trailers=1&size=3000&hold_head=g",
            &[],
            "g",
        )
        .await;
    for reply in &replies {
        assert_eq!(reply.body(), &origin::body(3000));
    }
    assert_eq!(outcomes(&replies), (1, 4, 0));
    baseline.assert_restored(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_204_that_carries_a_body_reaches_clients_empty_and_spoils_nothing() {
    let h = Harness::start().await;
    let reply = get(h.addr, "/nothing?status=204&body_anyway=1&size=50").await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert!(reply.body().is_empty());
    // The stray bytes must not be read as the next response on a pooled connection.
    for i in 0..5 {
        let reply = get(h.addr, &format!("/after/{i}?size=20")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body(), &origin::body(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_headers_are_cut_off_by_header_read_timeout() {
    let h = Harness::start_with_server_setting("header_read_timeout = \"300ms\"").await;
    let mut slow = TcpStream::connect(h.addr).await.expect("connect");
    slow.write_all(b"GET /slow HTTP/1.1\r\nhost: proxy.test\r\n")
        .await
        .expect("send");
    // A real slowloris trickles a header line every 100 ms, for as long as it is allowed to.
    // Were each line to restart the deadline, this would go on for all 200 lines (20 s);
    // the deadline runs from the start of the head, so the proxy closes it long before.
    let trickle = async {
        for line in 0..200 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let header = format!("x-line-{line}: 1\r\n");
            if slow.write_all(header.as_bytes()).await.is_err() {
                return Some(line);
            }
            let mut byte = [0u8; 1];
            // A zero-length read in time means the proxy closed the connection.
            if let Ok(Ok(0)) =
                tokio::time::timeout(Duration::from_millis(1), slow.read(&mut byte)).await
            {
                return Some(line);
            }
        }
        None
    };
    // Meanwhile other clients are served.
    let (cut_at, other) = tokio::join!(trickle, get(h.addr, "/other?size=5"));
    assert_eq!(other.body(), &origin::body(5));
    assert!(
        cut_at.is_some(),
        "a slowloris trickling a line every 100 ms was never disconnected"
    );
    assert_eq!(h.origin.hits_for("/slow"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed_after_header_read_timeout() {
    let h = Harness::start_with_server_setting("header_read_timeout = \"300ms\"").await;
    let mut silent = TcpStream::connect(h.addr).await.expect("connect");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, silent.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the silent client was never disconnected");
    assert!(rest.is_empty());
    assert_eq!(get(h.addr, "/after?size=5").await.body(), &origin::body(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_preface_split_over_two_writes_is_still_http2() {
    let h = harness().await;
    let mut client = TcpStream::connect(h.addr).await.expect("connect");
    client.write_all(b"PRI * HTTP/2.0\r\n").await.expect("send");
    // The proxy cannot tell yet; it must wait for the rest rather than pick HTTP/1. There is no
    // event for "the proxy has looked": the pause only makes it likely that it looks at the
    // partial preface, and the test holds either way.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    // The rest of the preface, then an empty SETTINGS frame.
    client
        .write_all(b"\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("send");
    let mut frame_head = [0u8; 9];
    tokio::time::timeout(PATIENCE, client.read_exact(&mut frame_head))
        .await
        .expect("an answer in time")
        .expect("a frame");
    // An HTTP/2 server's first frame is its SETTINGS (type 4); an HTTP/1 one would have
    // answered "HTTP/1.1 400".
    assert_eq!(frame_head[3], 4, "{frame_head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_hostile_requests_get_the_right_status() {
    let h = harness().await;
    let baseline = Baseline::take(&h).await;

    let answer = raw_exchange(&h, b"THIS IS NOT HTTP\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    let huge = format!(
        "GET /big HTTP/1.1\r\nhost: proxy.test\r\nx-big: {}\r\n\r\n",
        "y".repeat(600 * 1024)
    );
    let answer = raw_exchange(&h, huge.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    let answer = raw_exchange(
        &h,
        b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");

    // Both Content-Length and Transfer-Encoding (RFC 9112 §6.3): hyper frames the body by
    // Transfer-Encoding, drops Content-Length and closes the connection after answering, so
    // the request hidden behind the body is never read, and the upstream sees one consistent
    // framing. Nothing can be smuggled.
    let smuggle = b"POST /smuggle HTTP/1.1\r\nhost: proxy.test\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /hidden HTTP/1.1\r\nhost: proxy.test\r\n\r\n";
    let answer = raw_exchange(&h, smuggle).await;
    assert!(answer.contains("connection: close"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert_eq!(h.origin.hits_for("/hidden"), 0);
    let forwarded = h
        .origin
        .requests()
        .into_iter()
        .find(|r| r.target.starts_with("/smuggle"));
    let forwarded = forwarded.expect("the POST itself went upstream");
    assert_eq!(forwarded.header("content-length"), None);
    assert!(forwarded.body.is_empty());

    // Absolute-form targets are routed like origin-form ones.
    let answer = raw_exchange(
        &h,
        b"GET http://proxy.test/absolute?size=3 HTTP/1.1\r\nhost: proxy.test\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("012"), "{answer}");
    assert_eq!(h.origin.hits_for("/absolute"), 1);

    baseline.assert_restored(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_leaving_before_the_head_and_mid_body_leave_nothing_behind() {
    let h = harness().await;
    let baseline = Baseline::take(&h).await;
    // Leader and followers all leave before the head: the fetch is cancelled.
    let clients: Vec<_> = (0..5)
        .map(|_| {
            let addr = h.addr;
            tokio::spawn(async move { get(addr, "/gone?hold_head=never").await })
        })
        .collect();
    assert!(eventually(|| h.proxy.stats().snapshot().joined == 4).await);
    for client in clients {
        client.abort();
    }
    assert!(h.origin.wait_until(PATIENCE, |o| o.cancelled() == 1).await);

    // Everyone leaves mid-body: the fetch is cancelled too.
    let mut sender = connect(h.addr).await;
    let response = send_head(
        &mut sender,
        request(
            Method::GET,
            "/half?hold=half&size=100000",
            &[],
            Bytes::new(),
        ),
    )
    .await;
    let mut body = response.into_body();
    let _ = body.frame().await;
    drop(body);
    drop(sender);
    assert!(h.origin.wait_until(PATIENCE, |o| o.cancelled() == 2).await);
    baseline.assert_restored(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_reset_mid_flight_leaves_the_other_streams_alone() {
    let h = Harness::start().await;
    let sender = connect_h2(h.addr).await;
    let fetch = |sender: H2Sender| async move {
        let mut sender = sender;
        let request = Request::get("http://proxy.test/h2reset?hold=r&size=50000")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        response.into_body().collect().await.map(|b| b.to_bytes())
    };
    let doomed = tokio::spawn(fetch(sender.clone()));
    let survivor = tokio::spawn(fetch(sender.clone()));
    assert!(h.origin.wait_until(PATIENCE, |o| o.reached("r")).await);
    assert!(eventually(|| h.proxy.stats().snapshot().joined == 1).await);
    doomed.abort(); // drops the stream: RST_STREAM
    let _ = doomed.await;
    // The gate opens only once the proxy has seen the reset (its record of the aborted
    // response), so the rest of the flight really runs without that stream.
    h.wait_responses_done(&["leader", "follower"], 1).await;
    h.origin.open_gate("r");
    let body = survivor.await.expect("task").expect("body");
    assert_eq!(body, origin::body(50_000));
    assert_eq!(h.origin.hits(), 1);
    h.assert_table_empties().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_get_503_and_room_comes_back() {
    let h = Harness::start_with_server_setting("max_connections = 2").await;
    let first = connect(h.addr).await;
    let mut second = connect(h.addr).await;
    let answer = raw_exchange(&h, b"GET /third HTTP/1.1\r\nhost: proxy.test\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    // The connections inside the limit still work.
    let response = send_head(
        &mut second,
        request(Method::GET, "/inside?size=4", &[], Bytes::new()),
    )
    .await;
    assert_eq!(read_reply(response).await.body(), &origin::body(4));
    drop(first);
    let later = b"GET /later?size=2 HTTP/1.1\r\nhost: proxy.test\r\nconnection: close\r\n\r\n";
    let served = std::sync::Mutex::new(String::new());
    assert!(
        eventually_async(|| async {
            let answer = raw_exchange(&h, later).await;
            let ok = answer.starts_with("HTTP/1.1 200");
            *served.lock().unwrap() = answer;
            ok
        })
        .await,
        "a slot never came back"
    );
    let reply = served.into_inner().unwrap();
    assert!(reply.ends_with("01"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_backs_off_and_recovers() {
    use std::process::Command;

    let origin = coalesce_proxy::tools::origin::Origin::start(OriginSettings::default())
        .await
        .expect("origin");
    let file = crate::command_line::write_config(&config_text(&origin.url(), "", ""));
    // 64 descriptors in all: the proxy runs out well before the 100 connections below.
    let (mut child, mut lines) = spawn_with_log(
        Command::new("bash")
            .arg("-c")
            .arg(format!(
                "ulimit -n 64 && exec {} --config {}",
                crate::command_line::BINARY,
                file.0.display()
            ))
            .env("RUST_LOG", "warn,coalesce_proxy::server=info"),
    );
    let addr = listen_address(&mut lines).await;

    let mut held = Vec::new();
    for _ in 0..100 {
        if let Ok(stream) = TcpStream::connect(addr).await {
            held.push(stream);
        }
    }
    let warned = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.recv().await {
            if line.contains("accept failed") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(warned, Ok(true), "the proxy never hit its descriptor limit");
    // Backing off, not spinning: the loop pauses 50 ms after each failed accept, so over any
    // window it logs at most one failure per 50 ms (a spinning loop would log thousands). A
    // count, not a CPU reading, so a loaded machine cannot make it fail.
    while lines.try_recv().is_ok() {}
    let window = std::time::Instant::now();
    let mut failures = 0u128;
    while window.elapsed() < Duration::from_millis(500) {
        if let Ok(Some(line)) = tokio::time::timeout(Duration::from_millis(50), lines.recv()).await
        {
            failures += u128::from(line.contains("accept failed"));
        }
    }
    let allowed = window.elapsed().as_millis() / 50 + 3;
    assert!(
        failures <= allowed,
        "the accept loop spun: {failures} failed accepts in {:?}",
        window.elapsed()
    );
    assert!(failures >= 1, "still at the limit, it keeps retrying");

    // Once the held connections close, the proxy accepts again.
    drop(held);
    let reply = get(addr, "/after?size=6").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body(), &origin::body(6));
    assert!(
        child.try_wait().expect("status").is_none(),
        "the proxy died"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// RFC 9112 §9.3.2: a client may send requests on a connection without waiting for each
/// response (pipelining), and they are answered in order. Sent in one write, the first two
/// heads share their read with what follows them, which is where the patched hyper splits a
/// head off its buffer; the last is all that is left, which is where it copies the head's
/// target and values out instead (`vendor/hyper.diff`). Every target, field and body arrives
/// whole either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9112_9_3_2_pipelined_requests_in_one_write_are_answered_in_order() {
    let h = Harness::start().await;
    let answer = raw_exchange(
        &h,
        b"GET /pipe/1?echo_header=x-first HTTP/1.1\r\nhost: proxy.test\r\nx-first: one\r\n\r\n\
          POST /pipe/2 HTTP/1.1\r\nhost: proxy.test\r\ncontent-length: 4\r\n\r\nabcd\
          GET /pipe/3?echo_header=x-last HTTP/1.1\r\nhost: proxy.test\r\nx-last: three\r\n\
          connection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{answer}");
    let at = |text: &str| {
        answer
            .find(text)
            .unwrap_or_else(|| panic!("{text} in {answer}"))
    };
    assert!(at("\r\n\r\nx-first=one") < at("\r\n\r\nabcd"), "{answer}");
    assert!(at("\r\n\r\nabcd") < at("\r\n\r\nx-last=three"), "{answer}");
    let targets: Vec<String> = h.origin.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        [
            "/pipe/1?echo_header=x-first",
            "/pipe/2",
            "/pipe/3?echo_header=x-last"
        ]
    );
}
