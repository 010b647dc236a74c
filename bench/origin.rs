//! The benchmark origin: the in-tree scriptable origin as a standalone process.
//!
//! `cargo run --release --example origin -- --listen 127.0.0.1:9000 --delay 200ms --body-size 16KiB`
//! Requests can override the defaults per request (`?delay=…&size=…&chunked=1&chunks=…`); see
//! `src/origin.rs`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use coalesce_proxy::origin::{Origin, OriginSettings};

#[derive(Parser)]
struct Args {
    /// Loopback address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Delay before every response head.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    delay: Duration,
    /// Default body size, e.g. 1024, 16KiB, 4MiB.
    #[arg(long, default_value = "1KiB")]
    body_size: bytesize::ByteSize,
    /// Also answer every connection on this address with the number of requests served so
    /// far (plain text), so a benchmark can count upstream requests per scenario.
    #[arg(long)]
    stats_listen: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let origin = Origin::start_on(
        args.listen,
        OriginSettings {
            delay: args.delay,
            body_size: args.body_size.as_u64() as usize,
        },
    )
    .await?;
    println!("origin listening on {}", origin.url());
    let origin = std::sync::Arc::new(origin);
    if let Some(address) = args.stats_listen {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let origin = origin.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let hits = origin.hits();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    // Read the request first: closing with it unread would reset the
                    // connection and lose the answer.
                    let mut request = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = format!("{hits}\n");
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                });
            }
        });
    }
    tokio::signal::ctrl_c().await?;
    println!("origin served {} requests", origin.hits());
    Ok(())
}
