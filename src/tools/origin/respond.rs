//! Answering one request as its script says: gates, delays, failures before the head and
//! mid-body, the head (with Range, 304, cookies and extra headers), and the body in pieces.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::script::{parse_range, Script};
use super::{body, lock, InProgress, OriginStream, RecordedRequest, Shared};

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
pub(super) async fn respond(
    stream: &mut impl OriginStream,
    request: RecordedRequest,
    shared: &Shared,
    progress: &mut InProgress<'_>,
) -> Option<()> {
    let hit = shared.hits.fetch_add(1, Ordering::SeqCst) + 1;
    let script = Script::parse(&request.target);
    let asked = Asked::from(&request, &script);
    lock(&shared.requests).push(request);
    shared.changed();

    if let Some(protocol) = &asked.upgrade {
        return echo_upgraded(stream, protocol, shared).await;
    }
    let settings = lock(&shared.settings).clone();
    before_head(
        stream,
        &script,
        script.delay.unwrap_or(settings.delay),
        shared,
    )
    .await?;
    if script.informational {
        send(
            stream,
            b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n",
            shared,
        )
        .await?;
    }
    let body = asked
        .echo
        .clone()
        .unwrap_or_else(|| body(script.size.unwrap_or(settings.body_size)));
    let (status, body, head) = head_and_body(&script, &asked, hit, body, shared);
    let bodiless =
        asked.head_only || status == 204 || status == 304 || (100..200).contains(&status);
    if bodiless && (asked.head_only || !script.body_anyway) {
        progress.end();
        return send(stream, head.as_bytes(), shared).await;
    }
    if in_one_write(&script) {
        // As most servers send a small response (nginx, hyper: head and body in one
        // vectored write): a proxy then reads it whole at once, which is the case to measure.
        progress.end();
        return send(stream, &[head.as_bytes(), &body].concat(), shared).await;
    }
    send(stream, head.as_bytes(), shared).await?;
    write_body(stream, &script, &body, shared, progress).await
}

/// What the request itself asks for, beside its script.
struct Asked {
    head_only: bool,
    /// The body to send back instead of the pattern: `echo_header`'s value, or the request's
    /// own body.
    echo: Option<Bytes>,
    not_modified: bool,
    upgrade: Option<String>,
    range: Option<(usize, Option<usize>)>,
}

impl Asked {
    fn from(request: &RecordedRequest, script: &Script) -> Asked {
        let echo = if let Some(name) = &script.echo_header {
            let value = request.header(name).unwrap_or("");
            Some(Bytes::from(format!("{name}={value}")))
        } else {
            (!request.body.is_empty()).then(|| Bytes::from(request.body.clone()))
        };
        Asked {
            head_only: request.method == "HEAD",
            echo,
            not_modified: request.header("if-none-match") == Some("\"v1\""),
            upgrade: request.header("upgrade").map(str::to_owned),
            range: request
                .header("range")
                .and_then(parse_range)
                .or_else(|| script.partial.map(|n| (0, Some(n - 1)))),
        }
    }
}

/// Switches protocols and echoes everything sent afterwards, byte for byte.
async fn echo_upgraded(
    stream: &mut impl OriginStream,
    protocol: &str,
    shared: &Shared,
) -> Option<()> {
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

/// Everything before the head: the gates, the failures that happen before it, and the delay.
/// `None` closes the connection.
async fn before_head(
    stream: &mut impl OriginStream,
    script: &Script,
    delay: Duration,
    shared: &Shared,
) -> Option<()> {
    if let Some(gate) = &script.hold_head {
        wait_at_gate(stream, gate, shared).await?;
    }
    if let Some(gate) = &script.hold_rest {
        let first = lock(&shared.passed_once).insert(gate.clone());
        if !first {
            wait_at_gate(stream, gate, shared).await?;
        }
    }
    let down = script
        .close_after
        .is_some_and(|n| shared.hits.load(Ordering::SeqCst) > n);
    if down {
        return None;
    }
    match script.fail.as_deref() {
        Some("close_before_head") => return None,
        Some("reset_before_head") => {
            stream.reset_on_close();
            return None;
        }
        Some("stall_before_head") => {
            wait_or_hangup(stream, Duration::from_secs(3600), shared).await;
            return None;
        }
        _ => {}
    }
    let delay = match script.capacity {
        Some(capacity) => {
            let load = shared.in_progress.load(Ordering::SeqCst) as f64 / capacity as f64;
            delay.mul_f64(load.powi(2).max(1.0))
        }
        None => delay,
    };
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
    Some(())
}

/// The status, the body to send (a slice of it for a Range) and the head, as scripted.
fn head_and_body(
    script: &Script,
    asked: &Asked,
    hit: u64,
    mut body: Bytes,
    shared: &Shared,
) -> (u16, Bytes, String) {
    let mut status = script.status.unwrap_or(200);
    if script.fail_after.is_some_and(|n| hit > n) {
        status = 503;
    }
    let full_length = body.len();
    let mut content_range = None;
    if status == 200 && asked.not_modified {
        status = 304;
    } else if status == 200 {
        if let Some((first, last)) = asked.range {
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
    if status == 304 {
        head.push_str("\r\n");
    } else if script.chunked {
        head.push_str("transfer-encoding: chunked\r\n\r\n");
    } else {
        head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    }
    (status, body, head)
}

/// Writes the body in its scripted pieces, failing or holding after the first one as the
/// script says. `None` closes the connection.
/// Whether the body goes out whole with the head: one piece, plain framing, nothing scripted
/// to happen between the head and the body or inside it.
fn in_one_write(script: &Script) -> bool {
    let mid_body_fail = script
        .fail
        .as_deref()
        .is_some_and(|f| f.ends_with("_mid_body"));
    script.chunks == 1 && !script.chunked && script.hold.is_none() && !mid_body_fail
}

async fn write_body(
    stream: &mut impl OriginStream,
    script: &Script,
    body: &Bytes,
    shared: &Shared,
    progress: &mut InProgress<'_>,
) -> Option<()> {
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
    let last = body.len().div_ceil(piece_size).max(1) - 1;
    for (index, piece) in body.chunks(piece_size).enumerate() {
        if index > 0 && !script.gap.is_zero() {
            wait_or_hangup(stream, script.gap, shared).await?;
        }
        if index == last && !script.chunked {
            progress.end();
        }
        if script.chunked {
            let framed = [format!("{:x}\r\n", piece.len()).as_bytes(), piece, b"\r\n"].concat();
            send(stream, &framed, shared).await?;
        } else {
            send(stream, piece, shared).await?;
        }
        stream.flush().await.ok()?;
        if index == 0 {
            after_first_piece(stream, script, shared).await?;
        }
    }
    progress.end();
    if script.chunked && script.trailers {
        send(stream, b"0\r\nx-checksum: 42\r\n\r\n", shared).await?;
    } else if script.chunked {
        send(stream, b"0\r\n\r\n", shared).await?;
    }
    Some(())
}

/// The mid-body failures, and the `hold` gate, after the first piece is out.
async fn after_first_piece(
    stream: &mut impl OriginStream,
    script: &Script,
    shared: &Shared,
) -> Option<()> {
    match script.fail.as_deref() {
        Some("close_mid_body") => return None,
        Some("reset_mid_body") => {
            stream.reset_on_close();
            return None;
        }
        Some("stall_mid_body") => {
            wait_or_hangup(stream, Duration::from_secs(3600), shared).await;
            return None;
        }
        _ => {}
    }
    if let Some(gate) = &script.hold {
        wait_at_gate(stream, gate, shared).await?;
    }
    Some(())
}
