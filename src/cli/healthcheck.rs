//! `coalesce-proxy healthcheck`: one GET against a health URL, for container health checks
//! (the image has no shell and no curl).
//! With `--config`, the URL comes from the configuration the container runs: the admin
//! listener's `/healthz` when there is one, otherwise a connection to the first listen
//! address, so an image whose mounted config has no admin listener (or another port) is
//! still checked truthfully.

use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Checks the proxy that `config` describes (see the module's note).
pub async fn check_config(path: &std::path::Path, timeout: Duration) -> anyhow::Result<()> {
    let config = crate::config::Config::load(path).with_context(|| "healthcheck")?;
    // A wildcard address is reached on loopback from inside the container.
    let local = |address: std::net::SocketAddr| {
        if address.ip().is_unspecified() {
            let loopback: std::net::IpAddr = if address.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            };
            std::net::SocketAddr::new(loopback, address.port())
        } else {
            address
        }
    };
    if let Some(admin) = config.admin {
        let url: Uri = format!("http://{}/healthz", local(admin)).parse()?;
        return check(url, timeout).await;
    }
    let listen = local(config.server.listen[0]);
    tokio::time::timeout(timeout, TcpStream::connect(listen))
        .await
        .with_context(|| format!("healthcheck: {listen}: no connection within {timeout:?}"))?
        .with_context(|| format!("healthcheck: {listen} (no [admin] listener configured)"))?;
    Ok(())
}

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
