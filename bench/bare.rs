//! The floor for the proxy's own cost: a bare hyper reverse proxy and nothing else.
//!
//! `cargo run --release --example bare -- --listen 127.0.0.1:8081 --upstream 127.0.0.1:9000`
//!
//! hyper's server (HTTP/1.1, and HTTP/2 with prior knowledge) on a multi-thread tokio runtime,
//! and hyper-util's pooled legacy client to one upstream. No routing, header hygiene, flights,
//! cache, metrics or logging: whatever coalesce-proxy costs above this is its own code.
//! `bench/run.sh` and `bench/callgrind.sh` run it beside the proxy.

use std::convert::Infallible;
use std::net::SocketAddr;

use clap::Parser;
use http::uri::{Authority, Scheme, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

#[derive(Parser)]
struct Args {
    /// Loopback address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// The upstream's address.
    #[arg(long)]
    upstream: SocketAddr,
    /// Worker threads (default: one per core, as tokio does).
    #[arg(long)]
    threads: Option<usize>,
}

type BoxBody = http_body_util::combinators::BoxBody<bytes::Bytes, hyper::Error>;

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads);
    }
    runtime.enable_all().build()?.block_on(serve(args))
}

async fn serve(args: Args) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector);
    let authority = Authority::try_from(args.upstream.to_string()).expect("socket address");
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        let authority = authority.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let client = client.clone();
            let authority = authority.clone();
            async move { Ok::<_, Infallible>(forward(&client, authority, request).await) }
        });
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn forward(
    client: &Client<HttpConnector, Incoming>,
    authority: Authority,
    request: Request<Incoming>,
) -> Response<BoxBody> {
    use http_body_util::BodyExt;
    let (mut parts, body) = request.into_parts();
    let mut uri = parts.uri.into_parts();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(authority);
    parts.uri = Uri::from_parts(uri).expect("scheme, authority and path");
    parts.version = http::Version::HTTP_11;
    match client.request(Request::from_parts(parts, body)).await {
        Ok(response) => response.map(|body| body.boxed()),
        Err(_) => Response::builder()
            .status(502)
            .body(
                http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .expect("static response"),
    }
}
