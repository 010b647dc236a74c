//! The benchmark origin: the in-tree scriptable origin as a standalone process.
//!
//! `cargo run --release --example origin -- --listen 127.0.0.1:9000 --delay 200ms --body-size 16KiB`
//! Requests can override the defaults per request (`?delay=…&size=…&chunked=1&chunks=…`); see
//! `src/origin.rs`. With `--tls-ca-out FILE` it speaks HTTPS with a certificate for
//! `--tls-name` from a CA made at start-up, whose certificate it writes to FILE.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use coalesce_proxy::tools::origin::{Origin, OriginSettings};

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
    /// far (plain text), so a benchmark can count upstream requests per scenario; for
    /// `GET /connections`, the connections accepted so far and the most open at once since the
    /// previous such GET.
    #[arg(long)]
    stats_listen: Option<SocketAddr>,
    /// Serve HTTPS, writing the certificate of the CA that signed ours to this file.
    #[arg(long)]
    tls_ca_out: Option<std::path::PathBuf>,
    /// The DNS name (or IP address) our certificate is for.
    #[arg(long, default_value = "origin.bench")]
    tls_name: String,
}

/// A CA and a certificate for `name` signed by it: the server configuration, and the CA's
/// certificate as PEM.
fn tls_identity(name: &str) -> (std::sync::Arc<rustls::ServerConfig>, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "coalesce-proxy bench CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("key")).expect("CA");
    let key = KeyPair::generate().expect("key");
    let certificate = CertificateParams::new(vec![name.to_owned()])
        .expect("certificate params")
        .signed_by(&key, &ca)
        .expect("certificate");
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(vec![certificate.der().clone()], key.into())
    .expect("certificate and key match");
    (std::sync::Arc::new(config), ca.pem())
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let settings = OriginSettings {
        delay: args.delay,
        body_size: args.body_size.as_u64() as usize,
    };
    let origin = match &args.tls_ca_out {
        None => Origin::start_on(args.listen, settings).await?,
        Some(ca_out) => {
            let (config, ca_pem) = tls_identity(&args.tls_name);
            std::fs::write(ca_out, ca_pem)?;
            Origin::start_tls_on(args.listen, settings, config).await?
        }
    };
    println!("origin listening on {}", origin.url());
    let origin = std::sync::Arc::new(origin);
    if let Some(address) = args.stats_listen {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let origin = origin.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let origin = origin.clone();
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
                    let body = if request.starts_with(b"GET /connections ") {
                        let peak = origin.take_peak_open_connections();
                        format!("{} {peak}\n", origin.connections())
                    } else {
                        format!("{}\n", origin.hits())
                    };
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
