//! Accepting connections: one loop per listen address, and the cheap refusal of a connection
//! over `max_connections`.

use std::net::SocketAddr;
use std::time::Duration;

use std::io;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;

/// Binds `address` with an accept queue of `backlog` connections. A herd of fresh
/// connections arrives faster than one accept loop takes them; past the queue, the kernel drops
/// SYNs and each of those clients waits a second or more for its retransmit. `what` names the
/// listener in the error ("the admin listener 127.0.0.1:9901: Address in use").
pub(super) fn bind(address: SocketAddr, backlog: u32, what: &str) -> io::Result<TcpListener> {
    let bound = (|| {
        let socket = if address.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(address)?;
        socket.listen(backlog)
    })();
    bound.map_err(|err| {
        io::Error::new(
            err.kind(),
            format!("binding the {what} listener {address}: {err}"),
        )
    })
}

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
