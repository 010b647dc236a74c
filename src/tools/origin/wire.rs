//! The origin's HTTP/1.1 on the wire: reading requests (heads, Content-Length and chunked
//! bodies) and serving a connection's requests one after another.

use std::sync::Arc;

use tokio::io::AsyncReadExt;

use super::respond::respond;
use super::{InProgress, OriginStream, RecordedRequest, Shared};

/// A parsed request head plus its body.
struct Parsed {
    request: RecordedRequest,
    keep_alive: bool,
}

pub(super) async fn serve_connection(mut stream: impl OriginStream, shared: Arc<Shared>) {
    let mut buffer = Vec::with_capacity(4096);
    loop {
        let Some(parsed) = read_request(&mut stream, &mut buffer).await else {
            return;
        };
        let keep_alive = parsed.keep_alive;
        let mut progress = InProgress::start(&shared);
        let responded = respond(&mut stream, parsed.request, &shared, &mut progress).await;
        drop(progress);
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
pub(super) fn decode_chunked(buffer: &[u8]) -> Option<(Vec<u8>, usize)> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::origin::script::Script;
    use std::time::Duration;

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
