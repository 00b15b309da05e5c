//! Kubernetes ServiceAccount token validation (k8s-side.md §1.4, §2.3 steps 1–8).
//!
//! Owns: strict compact-JWS parsing (`jws`), JWK → ring keys and kube-style key selection
//! (`keys`), the claim structs and identity rules (`claims`), and the pure pipeline
//! (`validate`). [`Validator`] glues the pipeline to the issuers' key store and asks it for
//! one rate-limited refresh when a token names an unknown `kid`.
//!
//! Must never: log, format or return any part of a token (errors carry only a reason code);
//! fetch keys itself (the `jwks` module does); read the clock (callers pass `now`); check
//! whether the ServiceAccount still exists (the decision does, with the kube cache).

pub mod claims;
pub mod jws;
pub mod keys;
pub mod validate;
pub mod verified;

use std::fmt;
use std::sync::Arc;

pub use keys::{Alg, KeySet};
pub use validate::KeyLookup;

use crate::jwks::KeyStore;

/// Largest leeway accepted for `exp`/`nbf`/`iat`, in seconds.
pub const MAX_LEEWAY_SECS: u64 = 300;

/// What a token must satisfy.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    /// Accepted `iss` values, compared exactly (no trailing-slash normalisation).
    pub issuers: Vec<String>,
    /// The token's `aud` must contain at least one of these (exact match).
    pub audiences: Vec<String>,
    /// Clock-skew allowance for `exp`, `nbf` and `iat` (0–300 s, default 60 s).
    pub leeway_secs: u64,
    /// Accept legacy Secret-based tokens. Weaker: they never expire and carry no audience, so
    /// a leaked one is replayable forever and was not minted for us. Off by default; when on,
    /// only for the issuer `kubernetes/serviceaccount`, which must be configured explicitly.
    pub allow_legacy: bool,
}

impl TokenConfig {
    /// Defaults: leeway 60 s, legacy tokens refused.
    pub fn new(issuers: Vec<String>, audiences: Vec<String>) -> Self {
        TokenConfig {
            issuers,
            audiences,
            leeway_secs: 60,
            allow_legacy: false,
        }
    }

    /// Checks the settings; the message names the offending setting.
    pub fn check(&self) -> Result<(), String> {
        if self.issuers.is_empty() || self.issuers.iter().any(|i| i.is_empty()) {
            return Err("at least one non-empty issuer is required".into());
        }
        if self.audiences.is_empty() || self.audiences.iter().any(|a| a.is_empty()) {
            return Err("at least one non-empty audience is required".into());
        }
        if self.leeway_secs > MAX_LEEWAY_SECS {
            return Err(format!(
                "leeway {} s is above the maximum of {MAX_LEEWAY_SECS} s",
                self.leeway_secs
            ));
        }
        if self.allow_legacy && !self.issuers.iter().any(|i| i == claims::LEGACY_ISSUER) {
            return Err(format!(
                "allow_legacy needs the issuer {:?} configured explicitly",
                claims::LEGACY_ISSUER
            ));
        }
        Ok(())
    }
}

/// An object a token is bound to (`kubernetes.io.pod|node|secret`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundObject {
    pub name: String,
    /// Empty for the secret of a legacy token (its UID is not in the token).
    pub uid: String,
}

/// The identity a valid token proves. The ServiceAccount may still have been deleted or
/// re-created since: the caller must compare `sa_uid` with the cluster's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedToken {
    pub issuer: String,
    pub namespace: String,
    pub service_account: String,
    pub sa_uid: String,
    pub pod: Option<BoundObject>,
    pub node: Option<BoundObject>,
    pub secret: Option<BoundObject>,
    pub jti: Option<String>,
    /// Always `Some` for bound tokens; `None` only for accepted legacy tokens.
    pub exp: Option<u64>,
    pub iat: Option<u64>,
    /// A legacy Secret-based token (only with `allow_legacy`).
    pub legacy: bool,
}

/// Why a token was refused. Carries no token data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    UnsupportedAlg,
    Issuer,
    UnknownKid,
    Signature,
    MissingExp,
    Expired,
    NotYetValid,
    IssuedInFuture,
    Audience,
    Claims,
    LegacyToken,
}

impl TokenError {
    /// Every reason, for metrics pre-registration.
    pub const ALL: [TokenError; 12] = [
        TokenError::Malformed,
        TokenError::UnsupportedAlg,
        TokenError::Issuer,
        TokenError::UnknownKid,
        TokenError::Signature,
        TokenError::MissingExp,
        TokenError::Expired,
        TokenError::NotYetValid,
        TokenError::IssuedInFuture,
        TokenError::Audience,
        TokenError::Claims,
        TokenError::LegacyToken,
    ];

    /// The reason code for logs and metrics (k8s-side.md §2.3).
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::UnsupportedAlg => "unsupported_alg",
            TokenError::Issuer => "issuer",
            TokenError::UnknownKid => "unknown_kid",
            TokenError::Signature => "signature",
            TokenError::MissingExp => "missing_exp",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::IssuedInFuture => "issued_in_future",
            TokenError::Audience => "audience",
            TokenError::Claims => "claims",
            TokenError::LegacyToken => "legacy_token",
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "token rejected: {}", self.code())
    }
}

impl std::error::Error for TokenError {}

/// Validates tokens against the issuers' current keys. Cheap to share (`Arc`) across the
/// decision workers.
#[derive(Debug)]
pub struct Validator {
    cfg: TokenConfig,
    store: Arc<KeyStore>,
    verified: verified::VerifiedSignatures,
}

impl Validator {
    /// Fails if the settings are invalid or an issuer has no key source in the store.
    pub fn new(cfg: TokenConfig, store: Arc<KeyStore>) -> Result<Self, String> {
        cfg.check()?;
        if let Some(missing) = cfg.issuers.iter().find(|i| !store.has_issuer(i)) {
            return Err(format!("issuer {missing:?} has no key source"));
        }
        Ok(Validator {
            cfg,
            store,
            verified: verified::VerifiedSignatures::default(),
        })
    }

    pub fn config(&self) -> &TokenConfig {
        &self.cfg
    }

    /// Validates one token at time `now` (Unix seconds). On a `kid` the issuer's keys do not
    /// hold it asks the store for one rate-limited, single-flight refresh (blocking at most the
    /// store's bounded wait) and retries once. A token whose signature was verified before
    /// against the issuer's current key set skips the public-key operation
    /// ([`verified`]); its claims are checked every time.
    pub fn validate(&self, token: &str, now: u64) -> Result<ValidatedToken, TokenError> {
        let p = validate::prepare(token, &self.cfg)?;
        let keys = self.store.key_set(p.issuer()).unwrap_or_default();
        let digest = p.digest();
        if !self.verified.contains(&digest, &keys) {
            let keys = match validate::verify_signature(&p, &keys) {
                Ok(()) => keys,
                Err(f) if f.refresh_may_help => {
                    let kid = p.kid().unwrap_or_default();
                    if !self.store.refresh_for_unknown_kid(p.issuer(), kid) {
                        return Err(f.error);
                    }
                    let keys = self.store.key_set(p.issuer()).unwrap_or_default();
                    validate::verify_signature(&p, &keys).map_err(|f| f.error)?;
                    keys
                }
                Err(f) => return Err(f.error),
            };
            self.verified.insert(digest, keys);
        }
        validate::check_claims(p, &self.cfg, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for e in TokenError::ALL {
            let c = e.code();
            assert!(seen.insert(c), "{c}");
            assert!(
                c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{c}"
            );
            assert!(e.to_string().ends_with(c));
        }
    }

    #[test]
    fn config_checks() {
        let ok = TokenConfig::new(vec!["https://k".into()], vec!["nats".into()]);
        assert!(ok.check().is_ok());
        let mut c = ok.clone();
        c.leeway_secs = 301;
        assert!(c.check().unwrap_err().contains("leeway"));
        let mut c = ok.clone();
        c.allow_legacy = true;
        assert!(c.check().unwrap_err().contains("allow_legacy"));
        c.issuers.push(claims::LEGACY_ISSUER.into());
        assert!(c.check().is_ok());
        let mut c = ok.clone();
        c.audiences.clear();
        assert!(c.check().is_err());
        let mut c = ok;
        c.issuers = vec![String::new()];
        assert!(c.check().is_err());
    }
}
