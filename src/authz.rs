//! The narrow interface between the auth callout (NATS side) and the decision (Kubernetes side).
//!
//! The callout verifies and decodes each request into an [`AuthRequest`], asks a [`Decider`],
//! and turns the [`Decision`] into a signed response. Tests plug in their own `Decider`.

use crate::permissions::Permissions;
use crate::secret::Secret;

/// What the callout knows about one connecting client, taken from a verified request JWT.
#[derive(Debug, Clone, Default)]
pub struct AuthRequest {
    /// The server's public key (`N…`); the response's `aud`.
    pub server_id: String,
    pub server_name: String,
    pub server_version: String,
    /// The per-attempt user key (`U…`) the server made; `sub` of the response and user JWT.
    pub user_nkey: String,
    /// Client IP address, without port.
    pub client_host: String,
    /// Server-side connection id.
    pub client_id: u64,
    /// CONNECT `name`.
    pub client_name: String,
    /// `Client`, `Leafnode`, …
    pub client_kind: String,
    /// `nats`, `websocket`, `mqtt`.
    pub client_type: String,
    /// CONNECT `auth_token`.
    pub auth_token: Option<Secret>,
    /// CONNECT `user`.
    pub user: Option<String>,
    /// CONNECT `pass`.
    pub pass: Option<Secret>,
    /// The request JWT's `exp` (Unix seconds): after it the server no longer waits for us.
    pub expires: u64,
}

impl AuthRequest {
    /// The credential the client presented: `auth_token`, else `pass`.
    pub fn bearer_token(&self) -> Option<&str> {
        self.auth_token
            .as_ref()
            .filter(|s| !s.is_empty())
            .or(self.pass.as_ref().filter(|s| !s.is_empty()))
            .map(|s| s.expose())
    }
}

/// Who the client turned out to be, for logs and metrics (never a token).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub namespace: String,
    pub service_account: String,
}

/// An admitted client: what goes into its NATS user JWT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    /// The user JWT `name` (e.g. `<namespace>/<serviceaccount>`).
    pub name: String,
    pub permissions: Permissions,
    /// Unix seconds at which the NATS session must end (user JWT `exp`); `None` = no expiry.
    pub expires_at: Option<u64>,
    /// User JWT tags, e.g. `k8s-namespace:shop`.
    pub tags: Vec<String>,
    pub identity: Identity,
}

/// A refused client. `code` is a short, bounded reason code (a metric label); `identity` is
/// filled when the token was good enough to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub code: &'static str,
    pub identity: Option<Identity>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(Grant),
    Deny(Denial),
}

impl Decision {
    pub fn deny(code: &'static str) -> Self {
        Decision::Deny(Denial {
            code,
            identity: None,
        })
    }
}

/// Decides whether a client may connect and with which permissions. Runs on the callout's
/// worker threads; must be thread-safe and should not block for long (the server waits at
/// most its auth timeout, 2 s by default, for the whole round trip).
pub trait Decider: Send + Sync + 'static {
    fn decide(&self, req: &AuthRequest) -> Decision;
}

impl<F> Decider for F
where
    F: Fn(&AuthRequest) -> Decision + Send + Sync + 'static,
{
    fn decide(&self, req: &AuthRequest) -> Decision {
        self(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_prefers_auth_token_then_pass() {
        let mut r = AuthRequest {
            pass: Some(Secret::new("p")),
            ..Default::default()
        };
        assert_eq!(r.bearer_token(), Some("p"));
        r.auth_token = Some(Secret::new("t"));
        assert_eq!(r.bearer_token(), Some("t"));
        r.auth_token = Some(Secret::new(""));
        assert_eq!(r.bearer_token(), Some("p"));
        r.pass = None;
        assert_eq!(r.bearer_token(), None);
        assert!(!format!("{r:?}").contains("\"t\""));
    }
}
