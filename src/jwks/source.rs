//! Where an issuer's JWKS comes from: a JWKS URL (in cluster: the API server's
//! `/openid/v1/jwks` with the cluster CA and our own re-read ServiceAccount token), OIDC
//! discovery from the issuer URL, or a file (reloaded when its mtime or size changes).
//! Owns the HTTP hygiene (Accept header, 1 MiB body cap, no redirects, timeouts).
//! Must never send our bearer token over plain HTTP or to another origin, and never put a
//! token into an error or a log line.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::httpclient::{self, HttpSettings, TokenFile};

/// Largest JWKS or discovery document we read.
pub const MAX_BODY_BYTES: u64 = 1024 * 1024;

/// kube-apiserver answers 406 to `Accept: application/json` on `/openid/v1/jwks`; it serves
/// only `application/jwk-set+json`. Other issuers serve `application/json`, hence the list.
pub const JWKS_ACCEPT: &str = "application/jwk-set+json, application/json;q=0.9, */*;q=0.8";
const DISCOVERY_ACCEPT: &str = "application/json";

/// One issuer's key source.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A JWKS URL, fetched directly (no discovery).
    Jwks {
        url: String,
        http: HttpSettings,
        /// Sent as `Authorization: Bearer` (https only, re-read from the file).
        bearer: Option<Arc<TokenFile>>,
    },
    /// `<issuer>/.well-known/openid-configuration` → require `issuer` equal → `jwks_uri`.
    Discovery {
        http: HttpSettings,
        /// Sent only to https URLs with the issuer's origin.
        bearer: Option<Arc<TokenFile>>,
    },
    /// A JWKS file (air-gapped clusters).
    File(PathBuf),
}

/// HTTP settings for key fetches: connect 5 s, whole request 10 s.
pub fn default_http(ca_file: Option<PathBuf>) -> HttpSettings {
    HttpSettings {
        ca_file,
        connect_timeout: Some(Duration::from_secs(5)),
        total_timeout: Some(Duration::from_secs(10)),
        response_timeout: Some(Duration::from_secs(10)),
    }
}

/// Why a fetch failed. Messages carry URLs and statuses, never credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksError {
    Transport(String),
    Status(u16),
    TooLarge,
    Discovery(String),
    Io(String),
    Parse(String),
    NoUsableKeys,
    /// Another fetch of the same issuer was in flight and did not finish in time.
    Busy,
}

impl JwksError {
    pub fn code(&self) -> &'static str {
        match self {
            JwksError::Transport(_) => "transport",
            JwksError::Status(_) => "http_status",
            JwksError::TooLarge => "too_large",
            JwksError::Discovery(_) => "discovery",
            JwksError::Io(_) => "io",
            JwksError::Parse(_) => "parse",
            JwksError::NoUsableKeys => "no_usable_keys",
            JwksError::Busy => "busy",
        }
    }
}

impl std::fmt::Display for JwksError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksError::Transport(m) => write!(f, "transport error: {m}"),
            JwksError::Status(s) => write!(f, "HTTP status {s}"),
            JwksError::TooLarge => write!(f, "document larger than {MAX_BODY_BYTES} bytes"),
            JwksError::Discovery(m) => write!(f, "discovery: {m}"),
            JwksError::Io(m) => write!(f, "{m}"),
            JwksError::Parse(m) => write!(f, "{m}"),
            JwksError::NoUsableKeys => write!(f, "no usable key in the JWKS"),
            JwksError::Busy => write!(f, "another fetch is in flight"),
        }
    }
}

/// A fetched JWKS document.
#[derive(Debug)]
pub enum Fetched {
    Body {
        body: Vec<u8>,
        /// `Cache-Control: max-age`, unclamped.
        max_age: Option<Duration>,
    },
    /// A file source whose mtime and size did not change.
    Unchanged,
}

/// A source ready to fetch (agent built once).
#[derive(Debug)]
pub struct Fetcher {
    issuer: String,
    source: KeySource,
    agent: Option<ureq::Agent>,
    file_stamp: Mutex<Option<(SystemTime, u64)>>,
}

impl Fetcher {
    pub fn new(issuer: &str, source: KeySource) -> Result<Self, String> {
        let agent = match &source {
            KeySource::Jwks { url, http, bearer } => {
                check_url(url, bearer.is_some())?;
                Some(httpclient::agent(&bounded(http))?)
            }
            KeySource::Discovery { http, bearer } => {
                check_url(issuer, bearer.is_some())?;
                Some(httpclient::agent(&bounded(http))?)
            }
            KeySource::File(_) => None,
        };
        Ok(Fetcher {
            issuer: issuer.to_string(),
            source,
            agent,
            file_stamp: Mutex::new(None),
        })
    }

    pub fn is_file(&self) -> bool {
        matches!(self.source, KeySource::File(_))
    }

    pub fn fetch(&self) -> Result<Fetched, JwksError> {
        match (&self.source, &self.agent) {
            (KeySource::File(path), _) => self.read_file(path),
            (KeySource::Jwks { url, bearer, .. }, Some(agent)) => {
                get(agent, url, JWKS_ACCEPT, bearer.as_deref())
            }
            (KeySource::Discovery { bearer, .. }, Some(agent)) => {
                self.discover(agent, bearer.as_deref())
            }
            _ => Err(JwksError::Io("no HTTP agent".into())),
        }
    }

    fn discover(
        &self,
        agent: &ureq::Agent,
        bearer: Option<&TokenFile>,
    ) -> Result<Fetched, JwksError> {
        #[derive(Deserialize)]
        struct Doc {
            issuer: String,
            jwks_uri: String,
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let Fetched::Body { body, .. } = get(agent, &url, DISCOVERY_ACCEPT, bearer)? else {
            return Err(JwksError::Discovery("empty answer".into()));
        };
        let doc: Doc = serde_json::from_slice(&body)
            .map_err(|e| JwksError::Discovery(format!("bad document: {e}")))?;
        if doc.issuer != self.issuer {
            // The remote value is not echoed (unbounded, attacker-influenced).
            return Err(JwksError::Discovery(format!(
                "document names another issuer than {:?}",
                self.issuer
            )));
        }
        let issuer_https = self.issuer.starts_with("https://");
        if !(doc.jwks_uri.starts_with("https://")
            || (!issuer_https && doc.jwks_uri.starts_with("http://")))
        {
            return Err(JwksError::Discovery("jwks_uri is not https".into()));
        }
        // Our token goes only back to the issuer's own origin.
        let bearer = bearer.filter(|_| origin(&doc.jwks_uri) == origin(&self.issuer));
        get(agent, &doc.jwks_uri, JWKS_ACCEPT, bearer)
    }

    fn read_file(&self, path: &PathBuf) -> Result<Fetched, JwksError> {
        let io = |e: std::io::Error| JwksError::Io(format!("{}: {e}", path.display()));
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.len() > MAX_BODY_BYTES {
            return Err(JwksError::TooLarge);
        }
        let stamp = (meta.modified().map_err(io)?, meta.len());
        let mut last = self.file_stamp.lock().unwrap_or_else(|p| p.into_inner());
        if *last == Some(stamp) {
            return Ok(Fetched::Unchanged);
        }
        let body = std::fs::read(path).map_err(io)?;
        if body.len() as u64 > MAX_BODY_BYTES {
            return Err(JwksError::TooLarge);
        }
        *last = Some(stamp);
        Ok(Fetched::Body {
            body,
            max_age: None,
        })
    }

    /// Forget the file stamp, so a file whose content failed to load is read again.
    pub fn forget_file_stamp(&self) {
        *self.file_stamp.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Key fetches always have deadlines: defaults fill whatever the caller left open.
fn bounded(http: &HttpSettings) -> HttpSettings {
    let d = default_http(None);
    HttpSettings {
        ca_file: http.ca_file.clone(),
        connect_timeout: http.connect_timeout.or(d.connect_timeout),
        total_timeout: http.total_timeout.or(d.total_timeout),
        response_timeout: http.response_timeout.or(d.response_timeout),
    }
}

fn check_url(url: &str, with_bearer: bool) -> Result<(), String> {
    if url.starts_with("https://") {
        Ok(())
    } else if url.starts_with("http://") {
        if with_bearer {
            Err(format!(
                "{url}: refusing to send a bearer token over plain http"
            ))
        } else {
            Ok(())
        }
    } else {
        Err(format!("{url}: not an http(s) URL"))
    }
}

/// `scheme://host[:port]` of a URL.
pub fn origin(url: &str) -> &str {
    let after = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[after..].find(['/', '?', '#']) {
        Some(i) => &url[..after + i],
        None => url,
    }
}

fn get(
    agent: &ureq::Agent,
    url: &str,
    accept: &str,
    bearer: Option<&TokenFile>,
) -> Result<Fetched, JwksError> {
    let mut req = agent.get(url).header("Accept", accept);
    if let Some(tf) = bearer {
        let tok = tf
            .token()
            .map_err(|e| JwksError::Io(format!("bearer token: {e}")))?;
        req = req.header("Authorization", format!("Bearer {}", tok.expose()));
    }
    let mut resp = req
        .call()
        .map_err(|e| JwksError::Transport(format!("{url}: {e}")))?;
    let status = resp.status().as_u16();
    if status != 200 {
        if status == 401 {
            if let Some(tf) = bearer {
                tf.invalidate();
            }
        }
        return Err(JwksError::Status(status));
    }
    let max_age = resp
        .headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_max_age);
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_BODY_BYTES)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => JwksError::TooLarge,
            e => JwksError::Transport(format!("{url}: {e}")),
        })?;
    Ok(Fetched::Body { body, max_age })
}

/// `max-age=N` from a Cache-Control value; `no-cache`/`no-store` count as 0.
pub fn parse_max_age(v: &str) -> Option<Duration> {
    let mut out = None;
    for d in v.split(',').map(|d| d.trim().to_ascii_lowercase()) {
        if d == "no-cache" || d == "no-store" {
            return Some(Duration::ZERO);
        }
        if let Some(n) = d.strip_prefix("max-age=") {
            out = n
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control() {
        assert_eq!(
            parse_max_age("public, max-age=3600"),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(parse_max_age("Max-Age=5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(parse_max_age("public"), None);
        assert_eq!(parse_max_age("max-age=x"), None);
    }

    #[test]
    fn origins_and_urls() {
        assert_eq!(
            origin("https://a.b:6443/openid/v1/jwks"),
            "https://a.b:6443"
        );
        assert_eq!(origin("https://a.b"), "https://a.b");
        assert_eq!(origin("https://a.b?x"), "https://a.b");
        assert_ne!(origin("https://a.b.evil/x"), origin("https://a.b/x"));
        assert!(check_url("http://x/jwks", true).is_err());
        assert!(check_url("http://x/jwks", false).is_ok());
        assert!(check_url("file:///x", false).is_err());
        assert!(check_url("https://x", true).is_ok());
    }
}
