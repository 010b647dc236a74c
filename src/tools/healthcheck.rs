//! `coalesce-proxy healthcheck`: one GET against a health URL, for container health checks.

use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// GETs `url` (plain http) and succeeds on a 2xx answer within `timeout`.
pub async fn check(url: Uri, timeout: Duration) -> anyhow::Result<()> {
    if url.scheme_str() != Some("http") {
        bail!("healthcheck: {url}: only http:// URLs are supported");
    }
    let authority = url
        .authority()
        .with_context(|| format!("healthcheck: {url}: no host"))?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let probe = async {
        let stream = TcpStream::connect((authority.host(), port)).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = Request::get(url.path_and_query().map_or("/", |pq| pq.as_str()))
            .header(http::header::HOST, authority.as_str())
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        anyhow::Ok(response.status())
    };
    let status = tokio::time::timeout(timeout, probe)
        .await
        .with_context(|| format!("healthcheck: {url}: no answer within {timeout:?}"))?
        .with_context(|| format!("healthcheck: {url}"))?;
    if !status.is_success() {
        bail!("healthcheck: {url} answered {status}");
    }
    Ok(())
}
