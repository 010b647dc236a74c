//! The admin listener: `/` (the live status page) and `/status.json` (`server::status`),
//! `/metrics` (Prometheus), `/healthz` (alive), `/readyz` (serving), and `POST /purge` (by
//! prefix, path or surrogate key) for the response caches.
//!
//! It runs on its own address (`[admin] listen`), separate from client traffic, so probes and
//! scrapes never queue behind a herd. It keeps answering while the proxy drains, which is when
//! `/readyz` matters: it says 503 so load balancers stop sending new work. Purging cached
//! responses is the only thing it changes.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::observe::history::History;
use crate::proxy::Proxy;
use crate::server::status;

/// Whether the proxy takes new work: false before the listeners are up and while draining.
#[derive(Debug, Default)]
pub struct Readiness {
    ready: AtomicBool,
}

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// Serves the admin endpoints until the task is dropped.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, readiness: Arc<Readiness>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let started = std::time::Instant::now();
    // The status page's chart; sampled only where there is an admin listener to show it.
    let history = Arc::new(History::default());
    let sampler = tokio::spawn(history.clone().run(proxy.stats().clone()));
    let _stop_sampler = AbortOnDrop(sampler);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, most likely; the proxy's own accept loop logs it.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let proxy = proxy.clone();
        let readiness = readiness.clone();
        let history = history.clone();
        let service = service_fn(move |request| {
            let response = answer(&request, &proxy, &readiness, &history, started);
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        tokio::spawn(connection);
    }
}

/// Aborts the task when the admin listener's task ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn answer(
    request: &Request<Incoming>,
    proxy: &Proxy,
    readiness: &Readiness,
    history: &History,
    started: std::time::Instant,
) -> Response<Full<Bytes>> {
    if request.uri().path() == "/purge" {
        return purge(request, proxy);
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(proxy.render_metrics())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        "/" => with_type(
            Bytes::from_static(status::PAGE.as_bytes()),
            "text/html; charset=utf-8",
        ),
        "/status.json" => {
            let json = status::status_json(proxy, history, started).to_string();
            with_type(Bytes::from(json), "application/json")
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if readiness.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "admin endpoints: / /status.json /metrics /healthz /readyz POST /purge\n",
        ),
    }
}

/// `POST /purge?prefix=/path` removes every cached response under a path; `?key=/path` the
/// ones exactly at it; `?tag=name` the ones whose `Surrogate-Key` names it. Answers how many
/// were purged.
fn purge(request: &Request<Incoming>, proxy: &Proxy) -> Response<Full<Bytes>> {
    if request.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n");
    }
    let query = request.uri().query().unwrap_or("");
    let purged = query
        .split('&')
        .find_map(|pair| match pair.split_once('=') {
            Some(("prefix", path)) if path.starts_with('/') => Some(proxy.purge(path, false)),
            Some(("key", path)) if path.starts_with('/') => Some(proxy.purge(path, true)),
            Some(("tag", tag)) if !tag.is_empty() => Some(proxy.purge_tag(tag)),
            _ => None,
        });
    let Some(purged) = purged else {
        return text(
            StatusCode::BAD_REQUEST,
            "use /purge?prefix=/path, /purge?key=/path or /purge?tag=name\n",
        );
    };
    let mut response = Response::new(Full::new(Bytes::from(format!("purged {purged}\n"))));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn with_type(body: Bytes, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
