//! TLS towards clients (`[server] tls = { cert_file, key_file }`): the rustls server
//! configuration every listener shares, and the certificate it presents, which a reload swaps
//! without touching open connections.
//!
//! rustls on the `ring` provider, as the upstream side: no second crypto library in the tree.
//! TLS 1.2 and 1.3 only (rustls has nothing older), ALPN `h2` then `http/1.1`. The handshake
//! runs on the connection's worker under `header_read_timeout`, so a client that opens TLS and
//! stalls is cut like one that never sends a head.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// The certificate and key every handshake presents now. A reload stores a new pair; a
/// handshake already past this point keeps the one it took.
#[derive(Debug)]
pub struct ListenerCertificate(ArcSwap<CertifiedKey>);

impl ListenerCertificate {
    pub fn new(certified: Arc<CertifiedKey>) -> ListenerCertificate {
        ListenerCertificate(ArcSwap::new(certified))
    }

    /// Presents `certified` from the next handshake on.
    pub fn replace(&self, certified: Arc<CertifiedKey>) {
        self.0.store(certified);
    }
}

impl ResolvesServerCert for ListenerCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The acceptor for every listener, presenting whatever `certificate` holds.
pub fn acceptor(certificate: Arc<ListenerCertificate>) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}
