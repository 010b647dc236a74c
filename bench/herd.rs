//! The benchmark herd client: N connections, then N identical requests released at once.
//!
//! `cargo run --release --example herd -- --addr 127.0.0.1:8080 --path /hot --clients 1000 --expect-size 16KiB`
//! Every body is compared byte for byte with the origin's; one summary line is printed:
//! `clients=1000 ok=1000 bad=0 p50_ms=… p99_ms=… max_ms=… leader=1 follower=999 pass=0`.
//! Exits non-zero if any client did not get the exact expected response.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use coalesce_proxy::tools::herd::{send_all_when, HerdSummary};
use coalesce_proxy::tools::origin;
use http::Method;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Sends a GET and returns the connection unread.
async fn stuck_client(addr: SocketAddr, path: &str) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: bench.local\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    Ok(stream)
}

#[derive(Parser)]
struct Args {
    /// Loopback address of the proxy or origin under test.
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long, default_value = "/hot")]
    path: String,
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// The origin's body size for this path; every reply must equal it byte for byte.
    #[arg(long)]
    expect_size: bytesize::ByteSize,
    /// Extra clients that send the same request first and then read nothing until the herd
    /// is done: the slow client every fan-out must survive.
    #[arg(long, default_value_t = 0)]
    stuck: usize,
    /// Abort the whole herd after this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
    /// Once connected, hold the requests until this moment (milliseconds since the Unix
    /// epoch), so that herd processes sent to different proxies start together.
    #[arg(long)]
    release_at_ms: Option<u64>,
    /// Give every client its own key (`k=INDEX` added to the query): nothing can coalesce.
    #[arg(long)]
    distinct: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if !args.addr.ip().is_loopback() {
        eprintln!("herd: refusing to send load to a non-loopback address");
        return ExitCode::from(2);
    }
    let expected = origin::body(args.expect_size.as_u64() as usize);
    let mut stuck = Vec::new();
    for _ in 0..args.stuck {
        match stuck_client(args.addr, &args.path).await {
            Ok(stream) => stuck.push(stream),
            Err(err) => {
                eprintln!("herd: stuck client: {err}");
                return ExitCode::FAILURE;
            }
        }
    }
    let paths: Vec<String> = (0..args.clients)
        .map(|i| match (args.distinct, args.path.contains('?')) {
            (false, _) => args.path.clone(),
            (true, true) => format!("{}&k={i}", args.path),
            (true, false) => format!("{}?k={i}", args.path),
        })
        .collect();
    let release = async {
        let Some(at) = args.release_at_ms else { return };
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(at);
        match at.duration_since(std::time::SystemTime::now()) {
            Ok(wait) => tokio::time::sleep(wait).await,
            Err(late) => eprintln!(
                "herd: connected {:?} after the release moment",
                late.duration()
            ),
        }
    };
    let Ok(results) = tokio::time::timeout(
        args.timeout,
        send_all_when(args.addr, Method::GET, paths, release),
    )
    .await
    else {
        eprintln!("herd: timed out after {:?}", args.timeout);
        return ExitCode::FAILURE;
    };
    drop(stuck);
    let summary = HerdSummary::new(&results, &expected);
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    println!(
        "clients={} ok={} bad={} p50_ms={:.1} p99_ms={:.1} max_ms={:.1} leader={} follower={} pass={}",
        results.len(),
        summary.latencies.len(),
        summary.bad,
        ms(summary.percentile(50.0)),
        ms(summary.percentile(99.0)),
        ms(summary.max()),
        summary.leaders,
        summary.followers,
        summary.passed,
    );
    if let Some(problem) = &summary.first_problem {
        eprintln!("herd: first problem: {problem}");
    }
    let bad = summary.bad;
    if bad > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
