//! Outgoing HTTPS for the Kubernetes API and JWKS endpoints: one way to build a `ureq` agent
//! (rustls, optional custom CA bundle, timeouts, no redirects) and a bearer token that is read
//! from a file and re-read periodically or on demand (the kubelet rotates it).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::secret::Secret;

/// How to reach an HTTPS (or plain HTTP) endpoint.
#[derive(Debug, Clone, Default)]
pub struct HttpSettings {
    /// PEM bundle of CA certificates to trust instead of the built-in web roots.
    pub ca_file: Option<PathBuf>,
    /// Time to establish the TCP+TLS connection.
    pub connect_timeout: Option<Duration>,
    /// Bound on the whole request including the body; `None` for streams (watches).
    pub total_timeout: Option<Duration>,
    /// Bound on receiving the response head.
    pub response_timeout: Option<Duration>,
}

/// Builds an agent. Fails only on an unreadable or empty CA file.
pub fn agent(s: &HttpSettings) -> Result<ureq::Agent, String> {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let mut tls = TlsConfig::builder();
    if let Some(path) = &s.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
        let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(format!(
                "CA file {} holds no PEM certificate",
                path.display()
            ));
        }
        tls = tls.root_certs(RootCerts::new_with_certs(&certs));
    }
    let config = ureq::Agent::config_builder()
        .tls_config(tls.build())
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("nats-k8s-callout/", env!("CARGO_PKG_VERSION")))
        .timeout_connect(s.connect_timeout)
        .timeout_global(s.total_timeout)
        .timeout_recv_response(s.response_timeout)
        .build();
    Ok(config.new_agent())
}

/// A bearer token kept in a file (for example the pod's own ServiceAccount token). The file
/// is re-read when the cached copy is older than `max_age`, or after [`TokenFile::invalidate`]
/// (call it on a 401). A failed read keeps the previous token.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    max_age: Duration,
    cached: Mutex<Option<(Secret, Instant)>>,
}

impl TokenFile {
    pub fn new(path: impl AsRef<Path>, max_age: Duration) -> Self {
        TokenFile {
            path: path.as_ref().to_path_buf(),
            max_age,
            cached: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current token, read from the file if the cached copy is stale.
    pub fn token(&self) -> Result<Secret, String> {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((tok, at)) = cached.as_ref() {
            if at.elapsed() < self.max_age {
                return Ok(tok.clone());
            }
        }
        match std::fs::read_to_string(&self.path) {
            Ok(s) if !s.trim().is_empty() => {
                let tok = Secret::new(s.trim());
                *cached = Some((tok.clone(), Instant::now()));
                Ok(tok)
            }
            Ok(_) => cached
                .as_ref()
                .map(|(t, _)| t.clone())
                .ok_or_else(|| format!("token file {} is empty", self.path.display())),
            Err(e) => cached
                .as_ref()
                .map(|(t, _)| t.clone())
                .ok_or_else(|| format!("cannot read token file {}: {e}", self.path.display())),
        }
    }

    /// Forget the cached token so the next [`TokenFile::token`] reads the file.
    pub fn invalidate(&self) {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, at)) = cached.as_mut() {
            *at = Instant::now() - self.max_age - Duration::from_secs(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_reread_after_invalidate_and_survives_a_missing_file() {
        let dir = std::env::temp_dir().join(format!("tokfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("token");
        std::fs::write(&p, "one\n").unwrap();
        let tf = TokenFile::new(&p, Duration::from_secs(3600));
        assert_eq!(tf.token().unwrap().expose(), "one");
        std::fs::write(&p, "two").unwrap();
        assert_eq!(tf.token().unwrap().expose(), "one", "cached until stale");
        tf.invalidate();
        assert_eq!(tf.token().unwrap().expose(), "two");
        std::fs::remove_file(&p).unwrap();
        tf.invalidate();
        assert_eq!(
            tf.token().unwrap().expose(),
            "two",
            "keeps the last good token"
        );
        let missing = TokenFile::new(dir.join("nope"), Duration::from_secs(1));
        assert!(missing
            .token()
            .unwrap_err()
            .contains("cannot read token file"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn agent_rejects_a_ca_file_without_certificates() {
        let p = std::env::temp_dir().join(format!("ca-empty-{}.pem", std::process::id()));
        std::fs::write(&p, "not a pem").unwrap();
        let e = agent(&HttpSettings {
            ca_file: Some(p.clone()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        std::fs::remove_file(p).ok();
    }
}
