//! Resolves `[server] tls = { cert_file, key_file }`: reads both files now and checks that
//! the key belongs to the certificate, so that a missing file, a bad PEM or a mismatched pair
//! is a config error with its line and column, at `--check` and at a reload, never a failed
//! handshake later.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::raw;
use super::resolve::Resolver;
use super::{ConfigError, ListenerTls};

/// The certificates of a PEM file (a chain, or a CA bundle), at least one.
pub(super) fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|err| err.to_string())?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("not PEM certificates: {err}"))?;
    if certificates.is_empty() {
        return Err("no certificates in it".to_owned());
    }
    Ok(certificates)
}

impl Resolver<'_> {
    pub(super) fn listener_tls(
        &self,
        raw: raw::Spanned<raw::ListenerTls>,
    ) -> Result<ListenerTls, ConfigError> {
        let span = raw.span();
        let raw = raw.into_inner();
        let cert_file = self.config_relative(&raw.cert_file);
        let key_file = self.config_relative(&raw.key_file);
        let bad = |at: &raw::Spanned<String>, path: &PathBuf, why: String| {
            self.error_at(at.span(), format!("[server] tls {}: {why}", path.display()))
        };
        let chain =
            read_certificates(&cert_file).map_err(|why| bad(&raw.cert_file, &cert_file, why))?;
        let pem =
            std::fs::read(&key_file).map_err(|e| bad(&raw.key_file, &key_file, e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
            bad(
                &raw.key_file,
                &key_file,
                format!("no PEM private key in it: {e}"),
            )
        })?;
        let provider = rustls::crypto::ring::default_provider();
        let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
            self.error_at(
                span,
                format!(
                    "[server] tls: the key in {} does not fit the certificate in {}: {e}",
                    key_file.display(),
                    cert_file.display()
                ),
            )
        })?;
        Ok(ListenerTls {
            cert_file,
            key_file,
            certified: Arc::new(certified),
        })
    }

    /// A path as written, relative to the config file's directory.
    pub(super) fn config_relative(&self, file: &raw::Spanned<String>) -> PathBuf {
        match self.base_dir {
            Some(dir) => dir.join(file.get_ref()),
            None => PathBuf::from(file.get_ref()),
        }
    }
}
