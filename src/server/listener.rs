//! Accepting connections: one loop per listen address, and the cheap refusal of a connection
//! over `max_connections`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Answers a connection over `max_connections` with a 503 and closes it, without reading its
/// request: cheap, and clear to an HTTP/1 client. Bounded, so a client that never reads
/// cannot keep it alive.
pub(super) async fn refuse(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt;
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 38\r\nconnection: close\r\nretry-after: 1\r\n\r\ntoo many connections; try again soon\r\n";
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(BUSY)).await;
}

/// Accepts until the channel closes. Accept errors (out of file descriptors, above all) are
/// logged and followed by a pause, so the loop neither spins nor dies.
pub(super) async fn accept_loop(
    listener: TcpListener,
    accepted: mpsc::Sender<(TcpStream, SocketAddr)>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                if accepted.send((stream, peer)).await.is_err() {
                    return;
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "accept failed; pausing before the next accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
