//! The Kubernetes API client: where the API server is (in cluster or an explicit URL), how we
//! authenticate (a bearer token re-read from a file), two HTTP agents (short requests with a
//! total deadline; watches with connect/head deadlines and a per-read idle guard but no total
//! deadline), and errors typed by kind.
//!
//! It must never log or format a bearer token, and never buffer a watch body whole.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::httpclient::{agent, HttpSettings, TokenFile};

/// Largest list page body we accept (500 ServiceAccounts are well under 1 MiB).
const MAX_LIST_BODY: u64 = 64 * 1024 * 1024;
/// Largest single-object or Status body.
const MAX_SMALL_BODY: u64 = 1024 * 1024;

/// The kind of an API error, used as the `kind` label of
/// `nats_k8s_callout_kube_api_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Unauthorized,
    Forbidden,
    NotFound,
    /// HTTP 410 or a watch ERROR event with code 410 (expired RV or continue token).
    Gone,
    /// 504 "Too large resource version".
    TooLarge,
    Throttled,
    /// Any other 4xx.
    Client,
    Server,
    Transport,
    Decode,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::Unauthorized,
        ErrorKind::Forbidden,
        ErrorKind::NotFound,
        ErrorKind::Gone,
        ErrorKind::TooLarge,
        ErrorKind::Throttled,
        ErrorKind::Client,
        ErrorKind::Server,
        ErrorKind::Transport,
        ErrorKind::Decode,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Gone => "gone",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Throttled => "throttled",
            ErrorKind::Client => "client",
            ErrorKind::Server => "server",
            ErrorKind::Transport => "transport",
            ErrorKind::Decode => "decode",
        }
    }

    /// Whether this error means "start again with a fresh list".
    pub fn needs_relist(self) -> bool {
        matches!(self, ErrorKind::Gone | ErrorKind::TooLarge)
    }
}

/// An API error. The message never contains the token (URLs carry none either).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub status: Option<u16>,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, status: Option<u16>, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            status,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "{} (HTTP {s}): {}", self.kind.as_str(), self.message),
            None => write!(f, "{}: {}", self.kind.as_str(), self.message),
        }
    }
}

impl std::error::Error for ApiError {}

/// A Kubernetes `Status` object (error bodies and watch ERROR events).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Status {
    #[serde(default)]
    pub code: Option<u16>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub details: Option<StatusDetails>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StatusDetails {
    #[serde(default)]
    pub causes: Vec<StatusCause>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StatusCause {
    #[serde(default)]
    pub reason: Option<String>,
}

/// Classifies an HTTP status (and its Status body, if any) into an error kind.
pub fn classify(http: u16, status: &Status) -> ErrorKind {
    let too_large = status
        .message
        .as_deref()
        .unwrap_or("")
        .contains("Too large resource version")
        || status.details.as_ref().is_some_and(|d| {
            d.causes
                .iter()
                .any(|c| c.reason.as_deref() == Some("ResourceVersionTooLarge"))
        });
    match http {
        401 => ErrorKind::Unauthorized,
        403 => ErrorKind::Forbidden,
        404 => ErrorKind::NotFound,
        410 => ErrorKind::Gone,
        429 => ErrorKind::Throttled,
        504 if too_large => ErrorKind::TooLarge,
        400..=499 => ErrorKind::Client,
        _ => ErrorKind::Server,
    }
}

/// How to reach the API server.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// `https://host:port` or `http://127.0.0.1:8001` (kubectl proxy); no trailing slash.
    pub base_url: String,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    /// Bound on short requests (list pages, GETs).
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// How often the token file is re-read (and after every 401).
    pub token_max_age: Duration,
}

impl ApiConfig {
    /// An explicit API URL with optional token and CA files.
    pub fn new(base_url: &str, token_file: Option<PathBuf>, ca_file: Option<PathBuf>) -> Self {
        ApiConfig {
            base_url: base_url.trim_end_matches('/').to_string(),
            token_file,
            ca_file,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            token_max_age: Duration::from_secs(60),
        }
    }
}

/// `https://host:port`, with brackets around an IPv6 host.
pub fn in_cluster_url(host: &str, port: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters pass through).
pub fn encode_query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A streaming response body (a watch).
pub type Stream = Box<dyn Read + Send>;

/// The client. Cheap to share behind an `Arc`.
pub struct KubeClient {
    base_url: String,
    short: ureq::Agent,
    watch: ureq::Agent,
    token: Option<TokenFile>,
    request_timeout: Duration,
}

impl std::fmt::Debug for KubeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeClient")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl KubeClient {
    /// Builds both agents. Fails on an unreadable CA file.
    pub fn new(cfg: &ApiConfig) -> Result<Arc<Self>, ApiError> {
        let short = agent(&HttpSettings {
            ca_file: cfg.ca_file.clone(),
            connect_timeout: Some(cfg.connect_timeout),
            total_timeout: Some(cfg.request_timeout),
            response_timeout: None,
        })
        .map_err(|e| ApiError::new(ErrorKind::Transport, None, e))?;
        let watch = agent(&HttpSettings {
            ca_file: cfg.ca_file.clone(),
            connect_timeout: Some(cfg.connect_timeout),
            total_timeout: None,
            response_timeout: Some(cfg.request_timeout),
        })
        .map_err(|e| ApiError::new(ErrorKind::Transport, None, e))?;
        Ok(Arc::new(KubeClient {
            base_url: cfg.base_url.clone(),
            short,
            watch,
            token: cfg
                .token_file
                .as_ref()
                .map(|p| TokenFile::new(p, cfg.token_max_age)),
            request_timeout: cfg.request_timeout,
        }))
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn request(
        &self,
        agent: &ureq::Agent,
        path_and_query: &str,
    ) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        let mut req = agent
            .get(format!("{}{}", self.base_url, path_and_query))
            .header("Accept", "application/json");
        if let Some(tf) = &self.token {
            // An unreadable token file is sent as no token: the server answers 403 (anonymous).
            if let Ok(tok) = tf.token() {
                req = req.header("Authorization", format!("Bearer {}", tok.expose()));
            }
        }
        req
    }

    fn check(
        &self,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        path: &str,
    ) -> Result<ureq::http::Response<ureq::Body>, ApiError> {
        let mut resp = resp.map_err(|e| transport(e, path))?;
        let code = resp.status().as_u16();
        if code == 200 {
            return Ok(resp);
        }
        let status: Status =
            serde_json::from_reader(resp.body_mut().with_config().limit(MAX_SMALL_BODY).reader())
                .unwrap_or_default();
        let kind = classify(code, &status);
        if kind == ErrorKind::Unauthorized {
            if let Some(tf) = &self.token {
                tf.invalidate();
            }
        }
        let msg = status
            .message
            .unwrap_or_else(|| format!("GET {} failed", path_only(path)));
        Err(ApiError::new(kind, Some(code), msg))
    }

    /// GET a JSON document with the short agent; `deadline` overrides the default total bound.
    pub fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path_and_query: &str,
        deadline: Option<Duration>,
    ) -> Result<T, ApiError> {
        let started = std::time::Instant::now();
        let send = || {
            let req = self.request(&self.short, path_and_query);
            match deadline {
                Some(d) => req
                    .config()
                    .timeout_global(Some(
                        d.min(self.request_timeout)
                            .saturating_sub(started.elapsed())
                            .max(Duration::from_millis(1)),
                    ))
                    .build()
                    .call(),
                None => req.call(),
            }
        };
        let mut resp = send();
        // A pooled keep-alive connection the server has closed fails before any response:
        // GET is idempotent, so try once more on a fresh connection.
        if matches!(&resp, Err(ureq::Error::Io(e)) if stale_connection(e)) {
            resp = send();
        }
        let mut resp = self.check(resp, path_and_query)?;
        let reader = resp.body_mut().with_config().limit(MAX_LIST_BODY).reader();
        serde_json::from_reader(reader).map_err(|e| {
            if e.is_io() {
                ApiError::new(ErrorKind::Transport, None, format!("reading body: {e}"))
            } else {
                ApiError::new(ErrorKind::Decode, None, format!("decoding body: {e}"))
            }
        })
    }

    /// Opens a watch stream with the watch agent. `idle` bounds each read (no byte for that long
    /// means a dead connection); `total` bounds the whole body (server timeout + margin).
    pub fn open_stream(
        &self,
        path_and_query: &str,
        idle: Duration,
        total: Duration,
    ) -> Result<Stream, ApiError> {
        // A watch connection is never reused: the server may close it right after the stream
        // ends, and a pooled dead connection would cost a spurious error and a backoff.
        let req = self
            .request(&self.watch, path_and_query)
            .header("Connection", "close");
        let resp = req
            .config()
            .timeout_per_read(Some(idle))
            .timeout_recv_body(Some(total))
            .build()
            .call();
        let resp = self.check(resp, path_and_query)?;
        Ok(Box::new(resp.into_body().into_reader()))
    }
}

fn stale_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe
    )
}

fn path_only(p: &str) -> &str {
    p.split('?').next().unwrap_or(p)
}

fn transport(e: ureq::Error, path: &str) -> ApiError {
    ApiError::new(
        ErrorKind::Transport,
        None,
        format!("GET {}: {e}", path_only(path)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_hosts_get_brackets() {
        assert_eq!(in_cluster_url("10.0.0.1", "443"), "https://10.0.0.1:443");
        assert_eq!(in_cluster_url("fd00::1", "6443"), "https://[fd00::1]:6443");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode_query_value("a=b,c d/+"), "a%3Db%2Cc%20d%2F%2B");
        assert_eq!(encode_query_value("eyJ2-_.~"), "eyJ2-_.~");
    }

    #[test]
    fn statuses_classify_by_code_and_cause() {
        let s = Status::default();
        assert_eq!(classify(401, &s), ErrorKind::Unauthorized);
        assert_eq!(classify(403, &s), ErrorKind::Forbidden);
        assert_eq!(classify(410, &s), ErrorKind::Gone);
        assert_eq!(classify(504, &s), ErrorKind::Server);
        assert_eq!(classify(400, &s), ErrorKind::Client);
        let tl: Status = serde_json::from_str(
            r#"{"code":504,"message":"Too large resource version: 9, current: 3","details":{"causes":[{"reason":"ResourceVersionTooLarge"}]}}"#,
        )
        .unwrap();
        assert_eq!(classify(504, &tl), ErrorKind::TooLarge);
        assert!(ErrorKind::TooLarge.needs_relist() && !ErrorKind::Server.needs_relist());
    }
}
