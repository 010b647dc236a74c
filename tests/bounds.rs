//! Bounded memory and slow clients: one client that reads nothing never holds the others
//! back, and a flight never holds more than its budget.

use coalesce_proxy::tools::origin::{self, OriginSettings};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::*;

/// A client that sends a GET and then reads nothing.
async fn non_reader(h: &Harness, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(h.addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nhost: proxy.test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    stream
}

/// Reads a body of the origin's pattern frame by frame, comparing as it goes, so that
/// hundreds of megabytes need no buffer. Returns the bytes read, or why it stopped.
async fn read_and_verify(
    addr: std::net::SocketAddr,
    path: &str,
    size: usize,
) -> Result<usize, String> {
    let mut sender = connect(addr).await;
    let response = send_head(
        &mut sender,
        request(Method::GET, path, &[], Default::default()),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    // The pattern repeats every 63 bytes; one extra frame's worth lets any offset compare
    // as one slice.
    let pattern = origin::body(63 + (1 << 20));
    let mut body = response.into_body();
    let mut at = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            for piece in data.chunks(1 << 20) {
                let start = at % 63;
                if piece != &pattern[start..start + piece.len()] {
                    return Err(format!("wrong bytes in {}..{}", at, at + piece.len()));
                }
                at += piece.len();
            }
        }
    }
    if at == size {
        Ok(at)
    } else {
        Err(format!("{at} of {size} bytes"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_does_not_hold_back_the_others() {
    let h = Harness::start().await;
    const SIZE: usize = 16 << 20;
    let path = format!("/big?size={SIZE}&hold_head=g");
    // The client that never reads is the leader: the worst case.
    let stuck = non_reader(&h, &path).await;
    assert!(h.origin.wait_until(PATIENCE, |o| o.hits() == 1).await);

    let readers: Vec<_> = (0..100)
        .map(|_| {
            let (addr, path) = (h.addr, path.clone());
            tokio::spawn(async move { read_and_verify(addr, &path, SIZE).await })
        })
        .collect();
    h.open_when_followers(100, "g").await;
    for reader in readers {
        assert_eq!(reader.await.expect("reader"), Ok(SIZE));
    }
    // The 100 finished while the stuck client was still connected and had read nothing.
    let snapshot = h.proxy.stats().snapshot();
    assert_eq!(snapshot.clients_cut_off, 0);
    assert_eq!(snapshot.send_timeouts, 0);
    assert_eq!(h.origin.hits(), 1);
    drop(stuck);
    h.assert_table_empties().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_is_disconnected_after_send_timeout() {
    let h = Harness::start_with_server_setting("send_timeout = \"300ms\"").await;
    const SIZE: usize = 64 << 20;
    let mut stuck = non_reader(&h, &format!("/big?size={SIZE}")).await;
    assert!(
        eventually(|| h.proxy.stats().snapshot().send_timeouts == 1).await,
        "the stalled client was never disconnected"
    );
    // What the client can still read is what the kernel buffered: never the whole response.
    let mut received = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stuck.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the connection was not closed");
    assert!(
        received.len() < SIZE,
        "the whole body arrived: {}",
        received.len()
    );
    h.assert_table_empties().await;
    // Nobody else was reading, so the fetch was cancelled.
    assert!(h.origin.wait_until(PATIENCE, |o| o.cancelled() == 1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flight_stays_within_max_flight_buffer_with_a_slow_client() {
    const SIZE: usize = 96 << 20;
    const BUDGET: u64 = 16 << 20;
    // The stall timeout only has to outlast the readers' own hiccups on a loaded machine.
    let h = Harness::start_with(
        OriginSettings::default(),
        "",
        "[coalesce]\nmax_replay_body = \"1MiB\"\nmax_flight_buffer = \"16MiB\"\nclient_stall_timeout = \"2s\"\n",
    )
    .await;
    let path = format!("/huge?size={SIZE}&chunked=1&chunks=1536&hold_head=g");
    let stuck = non_reader(&h, &path).await;
    assert!(h.origin.wait_until(PATIENCE, |o| o.hits() == 1).await);
    let readers: Vec<_> = (0..9)
        .map(|_| {
            let (addr, path) = (h.addr, path.clone());
            tokio::spawn(async move { read_and_verify(addr, &path, SIZE).await })
        })
        .collect();
    h.open_when_followers(9, "g").await;
    for reader in readers {
        assert_eq!(reader.await.expect("reader"), Ok(SIZE));
    }
    // The flight's summary is recorded just after its end is published.
    assert!(eventually(|| h.proxy.stats().snapshot().flights_done == 1).await);
    let snapshot = h.proxy.stats().snapshot();
    assert_eq!(
        snapshot.clients_cut_off, 1,
        "the reader that read nothing is cut off"
    );
    assert!(
        snapshot.peak_flight_buffer <= BUDGET,
        "a flight held {} bytes, over its budget of {BUDGET}",
        snapshot.peak_flight_buffer
    );
    // It did fill: the stuck reader held the buffer until it was cut off.
    assert!(snapshot.peak_flight_buffer > BUDGET / 2);
    assert_eq!(h.origin.hits(), 1);
    drop(stuck);
    h.assert_table_empties().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_keeps_reading_is_never_cut_however_often_the_buffer_fills() {
    const SIZE: usize = 8 << 20;
    // A 1 MiB budget the two readers below fill again and again; every read they make must let
    // the fetch go on at once (not after client_stall_timeout, and without cutting anyone).
    // Two, because a flight's fetch runs ahead of its readers on a task of its own once a
    // follower joins; a lone leader runs it itself, at its own pace, and never fills a buffer.
    let h = Harness::start_with(
        OriginSettings::default(),
        "",
        "[coalesce]\nmax_replay_body = \"64KiB\"\nmax_flight_buffer = \"1MiB\"\nclient_stall_timeout = \"5s\"\n",
    )
    .await;
    let steady_reader = |addr| async move {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "GET /steady?size={SIZE}&hold_head=g HTTP/1.1\r\nhost: proxy.test\r\nconnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("send");
        // Reads 256 KiB every 20 ms: steady progress, slower than loopback.
        let mut received = Vec::with_capacity(SIZE + 1024);
        let mut buffer = vec![0u8; 256 << 10];
        loop {
            let n = tokio::time::timeout(PATIENCE, stream.read(&mut buffer))
                .await
                .expect("bytes in time")
                .expect("read");
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buffer[..n]);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        received
    };
    let (first, second, ()) = tokio::join!(
        steady_reader(h.addr),
        steady_reader(h.addr),
        h.open_when_followers(1, "g")
    );
    for received in [first, second] {
        let head_end = received
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a head")
            + 4;
        assert_eq!(&received[head_end..], &origin::body(SIZE)[..]);
    }
    assert!(eventually(|| h.proxy.stats().snapshot().flights_done == 1).await);
    let snapshot = h.proxy.stats().snapshot();
    assert_eq!(snapshot.clients_cut_off, 0);
    // The budget did fill (else this test would prove nothing), and held.
    assert!(
        snapshot.peak_flight_buffer > (1 << 20) / 2,
        "{}",
        snapshot.peak_flight_buffer
    );
    assert!(snapshot.peak_flight_buffer <= 1 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_a_full_flight_lets_the_others_go_on_at_once() {
    const SIZE: usize = 16 << 20;
    let h = Harness::start_with(
        OriginSettings::default(),
        "",
        "[coalesce]\nmax_replay_body = \"64KiB\"\nmax_flight_buffer = \"1MiB\"\nclient_stall_timeout = \"10s\"\n",
    )
    .await;
    let path = format!("/leaving?size={SIZE}&hold_head=g");
    // The leader reads nothing: once its socket buffers are full it holds the flight's
    // buffer full, and the reader behind it stops getting bytes.
    let stuck = non_reader(&h, &path).await;
    assert!(h.origin.wait_until(PATIENCE, |o| o.hits() == 1).await);
    let mut sender = connect(h.addr).await;
    let (response, ()) = tokio::join!(
        send_head(
            &mut sender,
            request(Method::GET, &path, &[], Default::default())
        ),
        h.open_when_followers(1, "g")
    );
    let mut body = response.into_body();
    let mut received = 0usize;
    // Read until the flow stops (the buffer is full, held by the leader).
    loop {
        match tokio::time::timeout(std::time::Duration::from_millis(300), body.frame()).await {
            Ok(Some(frame)) => {
                received += frame.expect("data").into_data().map_or(0, |d| d.len());
            }
            Ok(None) => panic!("the whole body arrived while the leader held the buffer"),
            Err(_) => break,
        }
    }
    // The leader leaves: what it held is freed, and the fetch must go on now, not after
    // client_stall_timeout (after which the reader, the slowest left, would be cut off).
    drop(stuck);
    let rest = tokio::time::timeout(PATIENCE, body.collect())
        .await
        .expect("the rest in time")
        .expect("the rest of the body, not a cut-off");
    assert_eq!(received + rest.to_bytes().len(), SIZE);
    assert_eq!(h.proxy.stats().snapshot().clients_cut_off, 0);
}

/// A client that asks for `path` on a new connection with a small receive window (so the
/// kernel takes little of the response off the proxy's hands) and then reads nothing.
async fn small_window_non_reader(h: &Harness, path: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket.connect(h.addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nhost: proxy.test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    stream
}

/// One HTTP/2 frame (RFC 9113 §4.1).
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An HTTP/2 connection that opens its streams with a window of 0 (SETTINGS_INITIAL_WINDOW_SIZE,
/// RFC 9113 §6.5.2) and never raises it: the proxy may send it no body byte at all.
async fn zero_window_h2_client(h: &Harness, paths: &[&str]) -> TcpStream {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[0, 4, 0, 0, 0, 0]));
    for (i, path) in paths.iter().enumerate() {
        // GET, http, then :path and :authority as literals with indexed names (RFC 7541 §6.2.2).
        let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
        block.extend_from_slice(path.as_bytes());
        block.extend_from_slice(&[0x01, 10]);
        block.extend_from_slice(b"proxy.test");
        out.extend(h2_frame(0x1, 0x5, 1 + 2 * i as u32, &block));
    }
    let mut stream = TcpStream::connect(h.addr).await.expect("connect");
    stream.write_all(&out).await.expect("send");
    stream
}

/// Flights whose clients all read nothing, each within its own `max_flight_buffer`, hold
/// together at most `[server] max_buffered_bytes` (and a chunk each): their fetches stop
/// reading upstream, a client that reads is served meanwhile, and when the clients leave,
/// every byte goes back to the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flights_whose_clients_read_nothing_stay_within_max_buffered_bytes_together() {
    const BUDGET: u64 = 4 << 20;
    let h = Harness::start_with_server_setting("max_buffered_bytes = \"4MiB\"").await;
    const SIZE: usize = 32 << 20;
    // Three HTTP/1.1 flights and one HTTP/2 flight, each with a leader and a follower (so
    // the fetch runs on its own task, ahead of both) that read nothing.
    let mut hogs = Vec::new();
    for (i, gate) in ["h1-a", "h1-b", "h1-c"].iter().enumerate() {
        let path = format!("/{gate}?size={SIZE}&hold_head={gate}");
        hogs.push(small_window_non_reader(&h, &path).await);
        assert!(
            h.origin
                .wait_until(PATIENCE, |o| o.hits() == i as u64 + 1)
                .await
        );
        hogs.push(small_window_non_reader(&h, &path).await);
        h.open_when_followers(i as u64 + 1, gate).await;
    }
    let path = format!("/h2?size={SIZE}&hold_head=h2");
    hogs.push(zero_window_h2_client(&h, &[&path, &path]).await);
    h.open_when_followers(4, "h2").await;

    let budget = &h.proxy.coordinator().budget;
    assert!(
        eventually(|| budget.waiting_fetches() == 4).await,
        "the fetches went on reading: {} waiting, {} bytes held",
        budget.waiting_fetches(),
        budget.used()
    );
    let metrics = h.proxy.render_metrics();
    assert!(
        metrics.contains("coalesce_proxy_fetches_waiting_for_room 4"),
        "{metrics}"
    );
    let held = budget.used();
    assert!(held <= BUDGET + 4 * (1 << 20), "{held} bytes held");
    assert!(held >= BUDGET / 2, "only {held} bytes held");

    let reply = get(h.addr, "/served?size=1000").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, Ok(origin::body(1000)));

    drop(hogs);
    h.assert_table_empties().await;
    // Flights closed to joiners are out of the table already; they end as their clients'
    // connections are found closed.
    assert!(
        eventually(|| (budget.used(), budget.waiting_fetches()) == (0, 0)).await,
        "{} bytes still held, {} fetches waiting",
        budget.used(),
        budget.waiting_fetches()
    );
}
