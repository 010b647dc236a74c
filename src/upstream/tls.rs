//! TLS to upstreams: the rustls client configuration for an `https://` upstream, built from
//! its `tls` settings (trusted roots, server name, SNI, verification), and the connector that
//! carries it, with `connect_timeout` over the whole set-up, handshake included.
//!
//! rustls runs on the `ring` provider, chosen explicitly so that no other crate in the tree can
//! switch the process-wide default, and because aws-lc-rs would need cmake to build. Plain
//! `http://` upstreams go through the same connector type, which then never starts TLS: one
//! client type per upstream keeps `upstream` free of a second code path.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_rustls::{ConfigBuilderExt, FixedServerNameResolver, HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::error::BoxError;
use crate::config::{UpstreamConfig, UpstreamTls};

/// The connector every upstream client uses: TLS for `https://` addresses, plain TCP for
/// `http://` ones, and `connect_timeout` over the whole set-up. As nginx's
/// `proxy_connect_timeout`, the TLS handshake counts: an upstream that accepts and then says
/// nothing is a connect failure (502, and a failure for passive health), not a wait for
/// `response_timeout`.
#[derive(Clone, Debug)]
pub struct UpstreamConnector {
    inner: HttpsConnector<HttpConnector>,
    timeout: Duration,
    /// Connections set up (`upstream_connections_opened`): how an operator sees churn.
    opened: crate::observe::sharded::Counter,
}

/// A connection the connector made: TLS or plain TCP.
pub(super) type Connection = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

impl tower_service::Service<Uri> for UpstreamConnector {
    type Response = Connection;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Connection, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, destination: Uri) -> Self::Future {
        let connecting = self.inner.call(destination);
        let timeout = self.timeout;
        let opened = self.opened.clone();
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(connected) => {
                    if connected.is_ok() {
                        opened.inc();
                    }
                    connected
                }
                Err(_) => Err(format!("connection set-up took longer than {timeout:?}").into()),
            }
        })
    }
}

/// Wraps `tcp` (already set up with the upstream's timeouts) for `config`'s scheme, counting
/// the connections it sets up in `opened`.
pub fn connector(
    config: &UpstreamConfig,
    tcp: HttpConnector,
    opened: crate::observe::sharded::Counter,
) -> UpstreamConnector {
    UpstreamConnector {
        inner: https_connector(config, tcp),
        timeout: config.connect_timeout,
        opened,
    }
}

fn https_connector(
    config: &UpstreamConfig,
    mut tcp: HttpConnector,
) -> HttpsConnector<HttpConnector> {
    // HttpConnector refuses https:// URIs unless told the layer above handles them.
    tcp.enforce_http(false);
    let tls = config.tls.as_ref();
    if tls.is_some_and(|tls| !tls.verify) {
        tracing::warn!(
            upstream = %config.name,
            "tls verify = false: this upstream's certificate is not checked"
        );
    }
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_config(tls))
        .https_or_http();
    let builder =
        match tls.and_then(|tls| tls.server_name.clone().or_else(|| followed_name(config))) {
            Some(name) => builder.with_server_name_resolver(FixedServerNameResolver::new(name)),
            None => builder,
        };
    // ALPN offers exactly the protocol the client will speak: an upstream that negotiates
    // ALPN but not h2 refuses the handshake, rather than the client falling back to HTTP/1.1.
    if config.http2 {
        builder.enable_http2().wrap_connector(tcp)
    } else {
        builder.enable_http1().wrap_connector(tcp)
    }
}

/// The name an upstream that follows DNS verifies its addresses against: the first URL's host
/// when it is a name. Its connections go to resolved IP addresses, whose URIs no longer carry
/// the name (`upstream::dns`).
fn followed_name(config: &UpstreamConfig) -> Option<ServerName<'static>> {
    if config.resolve_interval.is_zero() {
        return None;
    }
    let host = config.origins.first()?.host()?;
    if !crate::upstream::dns::follows(host) {
        return None;
    }
    ServerName::try_from(host.to_owned()).ok()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(tls: Option<&UpstreamTls>) -> ClientConfig {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let Some(tls) = tls else {
        // A plain upstream: the connector never starts TLS, so trust nothing.
        return builder
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
    };
    let mut config = if !tls.verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider())))
            .with_no_client_auth()
    } else if let Some(certificates) = &tls.ca_certificates {
        let mut roots = RootCertStore::empty();
        // Config loading already parsed them; one the store rejects (not a CA) is left out
        // and the handshake reports the unknown issuer.
        roots.add_parsable_certificates(certificates.iter().cloned());
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder.with_webpki_roots().with_no_client_auth()
    };
    config.enable_sni = tls.sni;
    config
}

/// `verify = false`: any certificate, any name. The handshake signatures are still checked,
/// so the session is encrypted to whoever holds the presented certificate's key; it is just
/// not known who that is.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            certificate,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            certificate,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
