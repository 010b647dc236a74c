//! `coalesce-demo`: the product in one command, with nothing else to install.
//!
//! It starts the built-in slow [`origin`](crate::tools::origin) and the proxy on ephemeral loopback
//! ports (configured from the embedded `demo.toml` beside it: a template with the ports still to
//! fill in, so not in `config/`, where every file checks), sends a herd of identical GETs, a
//! wave over a few keys and one POST, checks every body byte for byte, and prints what the
//! origin saw against what the clients got.

use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http::Method;

use crate::config::{Config, LogConfig, LogFormat};
use crate::observe::stats_line::StatsReporter;
use crate::server::Server;
use crate::tools::herd::{send_all, send_one, ClientResult, HerdSummary};
use crate::tools::origin::{self, Origin, OriginSettings};

/// The configuration the demo runs on; `{origin}` becomes the built-in origin's URL.
const DEMO_CONFIG: &str = include_str!("demo.toml");

/// Start a slow built-in origin and the proxy on loopback, send a herd through, and report.
#[derive(Debug, clap::Parser)]
#[command(name = "coalesce-demo", version, about)]
pub struct DemoArgs {
    /// Concurrent identical GETs in the herd.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// How long the origin takes to answer, e.g. 200ms or 1s.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    origin_delay: Duration,
    /// Response body size, e.g. 16384, 16KiB or 1MiB.
    #[arg(long, default_value = "16KiB", value_parser = parse_size)]
    body_size: usize,
    /// Distinct keys in the wave that follows the herd.
    #[arg(long, default_value_t = 8)]
    keys: usize,
    /// Make the origin fail every GET this way, to watch the errors clients get: one of
    /// close_before_head, reset_before_head, garbage_head, close_mid_body, reset_mid_body.
    /// The clients then do not get the origin's bytes, and the demo exits non-zero.
    #[arg(long, value_parser = ["close_before_head", "reset_before_head", "garbage_head", "close_mid_body", "reset_mid_body"])]
    origin_fail: Option<String>,
    /// Keep serving after the report, with a herd every 5 seconds, so the status page (its
    /// address is printed) shows flights and the chart moves; Ctrl-C stops.
    #[arg(long)]
    hold: bool,
}

fn parse_size(text: &str) -> Result<usize, String> {
    let size: bytesize::ByteSize = text.parse()?;
    usize::try_from(size.as_u64()).map_err(|_| format!("{text} is too large"))
}

/// The `coalesce-demo` binary: exit 0 when every client got the origin's exact bytes.
pub fn main() -> std::process::ExitCode {
    let args = <DemoArgs as clap::Parser>::parse();
    crate::cli::run_with_runtime(|| run(args))
}

/// The proxy and its origin, running on loopback for the demo.
struct Running {
    origin: Origin,
    proxy: std::net::SocketAddr,
    admin: Option<std::net::SocketAddr>,
    reporter: StatsReporter,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<crate::server::Shutdown>,
}

async fn start(args: &DemoArgs) -> anyhow::Result<Running> {
    crate::observe::logging::init_logging(&LogConfig {
        format: LogFormat::Text,
        level: "warn".into(),
        stats_interval: Duration::ZERO,
        access: false,
    });
    let origin = Origin::start(OriginSettings {
        delay: args.origin_delay,
        body_size: args.body_size,
    })
    .await
    .context("starting the demo origin")?;
    let config = Config::from_toml(&DEMO_CONFIG.replace("{origin}", &origin.url()))
        .context("the embedded demo configuration")?;
    let server = Server::bind(config).await.context("binding the proxy")?;
    let proxy_addr = server.local_addrs()[0];
    let admin_addr = server.admin_addr();
    let proxy = server.proxy().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let reporter = StatsReporter::new(proxy.stats().clone(), {
        let coordinator = proxy.coordinator().clone();
        move || coordinator.census()
    });
    println!(
        "coalesce-proxy demo: origin {} (answers after {}), proxy http://{proxy_addr}",
        origin.url(),
        humantime::format_duration(args.origin_delay),
    );
    if let Some(admin) = admin_addr {
        println!("status page: http://{admin}/ (live while the demo runs; --hold keeps it up)");
    }
    println!();
    Ok(Running {
        origin,
        proxy: proxy_addr,
        admin: admin_addr,
        reporter,
        stop,
        serving,
    })
}

async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let Running {
        origin,
        proxy: proxy_addr,
        admin: admin_addr,
        mut reporter,
        stop,
        serving,
    } = start(&args).await?;
    let expected = origin::body(args.body_size);
    let mut problems = Vec::new();

    // The origin reads its script from the query (see `origin`).
    let query = args
        .origin_fail
        .as_ref()
        .map_or_else(String::new, |fail| format!("?fail={fail}"));
    let paths = vec![format!("/demo/hot{query}"); args.clients];
    let herd = send_all(proxy_addr, Method::GET, paths).await;
    let herd_upstream = origin.hits();
    section(
        &format!("herd: {} concurrent identical GET /demo/hot", args.clients),
        &herd,
        herd_upstream,
        &expected,
        args.origin_delay,
        &mut problems,
    );
    if herd_upstream != 1 {
        problems.push(format!(
            "the herd made {herd_upstream} upstream requests, not 1"
        ));
    }

    let keys = args.keys.max(1);
    let paths = (0..args.clients)
        .map(|i| format!("/demo/wave/{}{query}", i % keys))
        .collect();
    let wave = send_all(proxy_addr, Method::GET, paths).await;
    let wave_upstream = origin.hits() - herd_upstream;
    section(
        &format!("wave: {} concurrent GETs over {keys} keys", args.clients),
        &wave,
        wave_upstream,
        &expected,
        args.origin_delay,
        &mut problems,
    );

    pass_through(proxy_addr, &origin, &mut problems).await;

    println!();
    println!(
        "totals: {} client requests, {} upstream requests",
        herd.len() + wave.len() + 1,
        origin.hits()
    );
    println!("stats: {}", reporter.next_line());

    if args.hold {
        hold(proxy_addr, admin_addr, args.clients).await;
    }
    let _ = stop.send(());
    let _ = serving.await;
    if !problems.is_empty() {
        bail!("the demo found problems:\n  {}", problems.join("\n  "));
    }
    Ok(())
}

/// Sends a herd on a new key every 5 seconds until Ctrl-C, for the status page to show.
async fn hold(proxy: std::net::SocketAddr, admin: Option<std::net::SocketAddr>, clients: usize) {
    if let Some(admin) = admin {
        println!();
        println!("holding: open http://{admin}/ to watch a herd every 5 s; Ctrl-C stops");
    }
    let mut round = 0u64;
    loop {
        round += 1;
        let paths = vec![format!("/demo/held/{round}"); clients];
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = send_all(proxy, Method::GET, paths) => {}
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// Sends one POST, which must pass through with its body echoed intact.
async fn pass_through(proxy: std::net::SocketAddr, origin: &Origin, problems: &mut Vec<String>) {
    let posted = Bytes::from_static(b"a POST always goes upstream on its own\n");
    let before = origin.hits();
    let post = send_one(proxy, Method::POST, "/demo/echo", posted.clone()).await;
    match post {
        Ok(result) => {
            println!(
                "pass-through: 1 POST /demo/echo -> {}, x-coalesce: {}, {} upstream request(s), body echoed {}",
                result.status,
                result.outcome,
                origin.hits() - before,
                if result.body == posted { "intact" } else { "CORRUPTED" }
            );
            if result.body != posted || result.outcome != "pass" {
                problems.push("the POST was not passed through intact".into());
            }
        }
        Err(err) => problems.push(format!("the POST failed: {err:#}")),
    }
}

/// Prints one scenario's report and notes any client that did not get the exact response.
fn section(
    title: &str,
    results: &[Result<ClientResult, anyhow::Error>],
    upstream: u64,
    expected: &Bytes,
    origin_delay: Duration,
    problems: &mut Vec<String>,
) {
    let summary = HerdSummary::new(results, expected);
    println!("{title}");
    println!("  upstream requests: {upstream}");
    println!(
        "  outcomes: leader={} follower={} pass={}",
        summary.leaders, summary.followers, summary.passed
    );
    println!(
        "  client latency: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (origin delay {} ms)",
        millis(summary.percentile(50.0)),
        millis(summary.percentile(99.0)),
        millis(summary.max()),
        origin_delay.as_millis()
    );
    println!(
        "  bodies: {} of {} identical to the origin's ({} bytes each)",
        results.len() - summary.bad,
        results.len(),
        expected.len()
    );
    if summary.bad > 0 {
        problems.push(format!(
            "{title}: {} clients did not get the exact response (e.g. {})",
            summary.bad,
            summary.first_problem.unwrap_or_default()
        ));
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
