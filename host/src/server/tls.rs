//! WSS: builds the TLS acceptor from PEM files. The certificate chain and the private
//! key may share one file (as the PHP library required) or come from two; an encrypted
//! key is decrypted with the configured passphrase (see [`super::pem_key`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

/// TLS settings, validated but not yet loaded.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Certificate chain, and the key unless `key_file` is set.
    pub cert_file: PathBuf,
    /// Separate private key.
    pub key_file: Option<PathBuf>,
    /// Passphrase of an encrypted key.
    pub passphrase: Option<String>,
    /// CAs that sign acceptable client certificates.
    pub client_ca_file: Option<PathBuf>,
}

/// Loads the certificates and key and builds the acceptor. Errors say which file and why.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, String> {
    let cert_sections = read_pem(&files.cert_file)?;
    let certs: Vec<CertificateDer<'static>> = cert_sections
        .iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| CertificateDer::from(p.contents().to_vec()))
        .collect();
    if certs.is_empty() {
        return Err(format!("cert_file {} holds no CERTIFICATE", files.cert_file.display()));
    }
    let (key_path, key_sections) = match &files.key_file {
        Some(path) => (path.as_path(), read_pem(path)?),
        None => (files.cert_file.as_path(), cert_sections),
    };
    let key = super::pem_key::private_key(&key_sections, files.passphrase.as_deref())
        .map_err(|error| format!("{}: {error}", key_path.display()))?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let builder = match &files.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            for section in read_pem(ca_file)?.iter().filter(|p| p.tag() == "CERTIFICATE") {
                roots
                    .add(CertificateDer::from(section.contents().to_vec()))
                    .map_err(|e| format!("client_ca_file {}: {e}", ca_file.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("client_ca_file {} holds no CERTIFICATE", ca_file.display()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("client_ca_file {}: {e}", ca_file.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "the private key in {} does not fit the certificate: {e}",
            key_path.display()
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read_pem(path: &Path) -> Result<Vec<pem::Pem>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    pem::parse_many(&bytes).map_err(|e| format!("{} is not valid PEM: {e}", path.display()))
}
