//! Our small synchronous NATS client (threads, no async runtime): just what the callout service
//! needs — CONNECT with user/password, token, nkey or `.creds` auth; optional TLS (rustls, ring);
//! SUB (with queue groups) delivering into bounded channels; PUB/HPUB; MSG/HMSG with headers;
//! PING/PONG keep-alive; reconnect for ever with capped backoff, resubscribing; lame-duck
//! handling; a real drain.
//!
//! Layout: `proto` (pure parser/encoder), `auth` (CONNECT credentials), `tls` (rustls config),
//! `client` (connection, reader thread, reconnect, subscriptions).
//!
//! This module must never log or return a secret (password, token, seed, JWT), must never block
//! its reader thread on a full subscriber queue, and must never buffer publishes without bound.

mod auth;
mod client;
pub mod proto;
mod tls;

use std::fmt;
use std::time::Duration;

pub(crate) use auth::parse_creds;
pub use auth::Auth;
pub use client::{Connection, Message, Subscription};
pub use proto::{Headers, ServerInfo};
pub use tls::TlsOptions;

/// Metric: messages dropped because a subscription's queue was full.
pub const METRIC_DROPPED: &str = "nats_k8s_callout_nats_messages_dropped_total";
/// Metric: successful reconnects.
pub const METRIC_RECONNECTS: &str = "nats_k8s_callout_nats_reconnects_total";

/// Connection settings. [`Options::new`] gives sensible defaults.
#[derive(Debug, Clone)]
pub struct Options {
    /// Server URLs: `nats://host:port`, `tls://host:port` or `host:port` (port defaults to 4222).
    /// Credentials in URLs are refused; use `auth`.
    pub servers: Vec<String>,
    pub auth: Auth,
    pub tls: TlsOptions,
    /// The connection name shown by the server (`CONNECT name`).
    pub name: String,
    /// Bound on one connect attempt: TCP, TLS, INFO and the CONNECT/PING→PONG round trip.
    pub connect_timeout: Duration,
    /// How often we PING the server.
    pub ping_interval: Duration,
    /// Unanswered PINGs after which the link is considered dead.
    pub max_pings_out: u32,
    /// Reconnect backoff: first delay and cap (full rounds over the server list back off).
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
    /// Longest control line accepted from the server.
    pub max_control_line: usize,
    /// Bound on one socket write; a stuck write marks the link dead.
    pub write_timeout: Duration,
}

impl Options {
    pub fn new(servers: Vec<String>) -> Self {
        Options {
            servers,
            auth: Auth::None,
            tls: TlsOptions::default(),
            name: "nats-k8s-callout".to_string(),
            connect_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(20),
            max_pings_out: 2,
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            max_control_line: proto::DEFAULT_MAX_CONTROL_LINE,
            write_timeout: Duration::from_secs(5),
        }
    }
}

/// Errors of the NATS client. [`Error::code`] gives a short reason code.
#[derive(Debug)]
pub enum Error {
    /// Bad options (server URL, missing setting).
    Config(String),
    Io(std::io::Error),
    Tls(String),
    Protocol(proto::ProtoError),
    /// A local credential problem (unreadable creds file, bad seed, no nonce to sign).
    Auth(&'static str),
    /// `-ERR` from the server, text as sent (e.g. `Authorization Violation`).
    Server(String),
    Timeout,
    NotConnected,
    Closed,
    PayloadTooLarge,
}

impl Error {
    pub fn code(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Io(_) => "io",
            Error::Tls(_) => "tls",
            Error::Protocol(_) => "protocol",
            Error::Auth(_) => "credentials",
            Error::Server(text) => server_error_code(text),
            Error::Timeout => "timeout",
            Error::NotConnected => "not_connected",
            Error::Closed => "closed",
            Error::PayloadTooLarge => "payload_too_large",
        }
    }
}

/// Reason code for a server `-ERR` text.
pub fn server_error_code(text: &str) -> &'static str {
    let t = text.to_ascii_lowercase();
    if t.starts_with("authorization violation") {
        "authorization_violation"
    } else if t.starts_with("permissions violation") {
        "permissions_violation"
    } else if t.starts_with("maximum control line") {
        "max_control_line_exceeded"
    } else if t.starts_with("authentication timeout") {
        "authentication_timeout"
    } else if t.starts_with("maximum payload") {
        "max_payload_exceeded"
    } else {
        "server_error"
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(s) => write!(f, "invalid NATS options: {s}"),
            Error::Io(e) => write!(f, "NATS i/o error: {e}"),
            Error::Tls(s) => write!(f, "NATS TLS error: {s}"),
            Error::Protocol(e) => write!(f, "NATS {e}"),
            Error::Auth(s) => write!(f, "NATS credentials: {s}"),
            Error::Server(s) => write!(f, "NATS server error: {s}"),
            Error::Timeout => f.write_str("NATS timeout"),
            Error::NotConnected => f.write_str("NATS not connected"),
            Error::Closed => f.write_str("NATS connection closed"),
            Error::PayloadTooLarge => f.write_str("NATS payload too large"),
        }
    }
}

impl std::error::Error for Error {}

impl From<proto::ProtoError> for Error {
    fn from(e: proto::ProtoError) -> Self {
        Error::Protocol(e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Error::Timeout,
            _ => Error::Io(e),
        }
    }
}

/// A parsed server address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerAddr {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "tls" } else { "nats" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl ServerAddr {
    /// Parses `nats://h:p`, `tls://h:p`, `h:p`, `h`, `[v6]:p`. Credentials are refused (and never
    /// echoed in the error).
    pub fn parse(url: &str, tls_default: bool) -> Result<ServerAddr, Error> {
        let url = url.trim();
        let (tls, rest) = if let Some(r) = url.strip_prefix("nats://") {
            (tls_default, r)
        } else if let Some(r) = url.strip_prefix("tls://") {
            (true, r)
        } else if url.contains("://") {
            return Err(Error::Config("unsupported URL scheme".into()));
        } else {
            (tls_default, url)
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('@') {
            return Err(Error::Config(
                "credentials in server URLs are not supported".into(),
            ));
        }
        let (host, port) = if let Some(r) = rest.strip_prefix('[') {
            let (h, after) = r
                .split_once(']')
                .ok_or_else(|| Error::Config(format!("bad server address {rest}")))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(Error::Config(format!("bad server address {rest}"))),
            };
            (h, port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| Error::Config(format!("bad port in {rest}")))?,
            None => 4222,
        };
        if host.is_empty() || host.contains(['/', ' ', '?', '#']) {
            return Err(Error::Config(format!("bad server address {rest}")));
        }
        Ok(ServerAddr {
            host: host.to_string(),
            port,
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing() {
        let p = |u| ServerAddr::parse(u, false);
        assert_eq!(
            p("nats://127.0.0.1:4333").unwrap(),
            ServerAddr {
                host: "127.0.0.1".into(),
                port: 4333,
                tls: false
            }
        );
        assert!(p("tls://example.com").unwrap().tls);
        assert_eq!(p("example.com").unwrap().port, 4222);
        assert_eq!(p("[::1]:5000").unwrap().host, "::1");
        assert_eq!(p("nats://[::1]").unwrap().port, 4222);
        assert_eq!(p("[::1]:5000").unwrap().to_string(), "nats://[::1]:5000");
        assert!(ServerAddr::parse("h:1", true).unwrap().tls);
        for bad in [
            "", "ws://h:1", "h:0", "h:99999", "h:x", "nats://", "[::1", "a/b:1",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
        let e = p("nats://user:hunter2@h:4222").unwrap_err();
        assert!(!e.to_string().contains("hunter2"));
    }

    #[test]
    fn server_error_codes() {
        assert_eq!(
            Error::Server("Authorization Violation".into()).code(),
            "authorization_violation"
        );
        assert_eq!(
            Error::Server("Permissions Violation for Publish to \"x\"".into()).code(),
            "permissions_violation"
        );
        assert_eq!(
            Error::Server("maximum control line exceeded".into()).code(),
            "max_control_line_exceeded"
        );
        assert_eq!(Error::Server("Unknown".into()).code(), "server_error");
    }
}
