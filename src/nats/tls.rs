//! TLS for the NATS client: builds a rustls (ring) client configuration from a CA file (or the
//! webpki roots) and an optional client certificate, and wraps a connected socket.
//!
//! Owns certificate loading. Must never disable verification.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use super::Error;

/// TLS settings. TLS is used for `tls://` URLs, when `required` is set, or when the server
/// requires it.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// CA certificates (PEM) to trust instead of the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM), for servers with `verify: true`.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// Always use TLS, whatever the URL says.
    pub required: bool,
}

fn tls_err(what: &str, path: &Path) -> Error {
    Error::Tls(format!("{what}: {}", path.display()))
}

/// The rustls client configuration for these options (files are read on every call, so
/// rotated certificates are picked up on reconnect).
pub(crate) fn client_config(opts: &TlsOptions) -> Result<Arc<ClientConfig>, Error> {
    let mut roots = RootCertStore::empty();
    match &opts.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|_| tls_err("cannot read CA file", path))?;
            for c in certs {
                let c = c.map_err(|_| tls_err("bad certificate in CA file", path))?;
                roots
                    .add(c)
                    .map_err(|_| tls_err("unusable certificate in CA file", path))?;
            }
            if roots.is_empty() {
                return Err(tls_err("no certificate in CA file", path));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_root_certificates(roots);
    let config = match (&opts.cert_file, &opts.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|_| tls_err("cannot read client certificate", cert))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| tls_err("bad client certificate", cert))?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|_| tls_err("cannot read client key", key))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|_| tls_err("client certificate and key do not match", cert))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(Error::Tls(
                "client certificate and key must be given together".into(),
            ))
        }
    };
    Ok(Arc::new(config))
}

/// A new client session for `host` (a DNS name or an IP literal).
pub(crate) fn session(config: Arc<ClientConfig>, host: &str) -> Result<ClientConnection, Error> {
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| Error::Tls(format!("invalid server name {host}")))?;
    ClientConnection::new(config, name).map_err(|e| Error::Tls(e.to_string()))
}
