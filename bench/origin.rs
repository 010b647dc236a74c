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
    tokio::signal::ctrl_c().await?;
    println!("origin served {} requests", origin.hits());
    Ok(())
}
