//! Resolves `[server] tls = { cert_file, key_file }`: reads both files now and checks that
//! the key belongs to the certificate, so that a missing file, a bad PEM or a mismatched pair
//! is a config error with its line and column, at `--check` and at a reload, never a failed
//! handshake later.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::raw;
use super::resolve::Resolver;
use super::{ConfigError, ListenerTls};

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
        let pem = std::fs::read(&cert_file)
            .map_err(|e| bad(&raw.cert_file, &cert_file, e.to_string()))?;
        let chain = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                bad(
                    &raw.cert_file,
                    &cert_file,
                    format!("not a PEM certificate chain: {e}"),
                )
            })?;
        if chain.is_empty() {
            return Err(bad(
                &raw.cert_file,
                &cert_file,
                "no certificates in it".to_owned(),
            ));
        }
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
