//! The validation pipeline of k8s-side.md §2.3 steps 1–8, pure: the token, the configuration,
//! the issuer's key set and `now` go in; an identity or one reason comes out. Steps run in
//! order and the first failure decides the reason code. Never logs, never fetches keys.

use std::collections::HashMap;
use std::sync::Arc;

use super::claims::{self, Claims, LEGACY_ISSUER};
use super::jws::{self, Jws};
use super::keys::{Alg, KeySet, Selection};
use super::{BoundObject, TokenConfig, TokenError, ValidatedToken};
use crate::policy::{is_dns_label, is_dns_subdomain};

/// Where the validator finds an issuer's current keys.
pub trait KeyLookup {
    fn key_set(&self, issuer: &str) -> Option<Arc<KeySet>>;
}

impl KeyLookup for HashMap<String, Arc<KeySet>> {
    fn key_set(&self, issuer: &str) -> Option<Arc<KeySet>> {
        self.get(issuer).cloned()
    }
}

/// A token that passed the shape, algorithm and issuer checks (steps 1–3); not yet trusted.
#[derive(Debug)]
pub struct Prepared<'a> {
    jws: Jws<'a>,
    alg: Alg,
    claims: Claims,
}

impl Prepared<'_> {
    /// The (configured) issuer this token names.
    pub fn issuer(&self) -> &str {
        self.claims.iss.as_deref().unwrap_or("")
    }
    /// The header's `kid`; an empty one counts as absent, as in kube-apiserver.
    pub fn kid(&self) -> Option<&str> {
        self.jws.header.kid.as_deref().filter(|k| !k.is_empty())
    }
    /// What identifies these signed bytes and their signature (see `token::verified`).
    pub fn digest(&self) -> [u8; 32] {
        super::verified::digest(&self.jws)
    }
}

/// Why the signature step failed, and whether fetching the issuer's keys again may help
/// (only for a kid the set does not know at all).
#[derive(Debug, PartialEq, Eq)]
pub struct KeyFailure {
    pub error: TokenError,
    pub refresh_may_help: bool,
}

/// Steps 1–3: shape and size [malformed], algorithm allow-list and no `crit`
/// [unsupported_alg], payload decoding [malformed], exact issuer [issuer].
pub fn prepare<'a>(token: &'a str, cfg: &TokenConfig) -> Result<Prepared<'a>, TokenError> {
    let jws = jws::parse(token)?;
    let alg = Alg::from_name(&jws.header.alg).ok_or(TokenError::UnsupportedAlg)?;
    if jws.header.crit.is_some() {
        return Err(TokenError::UnsupportedAlg);
    }
    let claims: Claims = serde_json::from_slice(&jws.payload).map_err(|_| TokenError::Malformed)?;
    match claims.iss.as_deref() {
        Some(iss) if cfg.issuers.iter().any(|i| i == iss) => {}
        _ => return Err(TokenError::Issuer),
    }
    Ok(Prepared { jws, alg, claims })
}

/// Steps 4–5: key selection as kube-apiserver does it, then the signature.
pub fn verify_signature(p: &Prepared<'_>, keys: &KeySet) -> Result<(), KeyFailure> {
    let fail = |error, refresh_may_help| KeyFailure {
        error,
        refresh_may_help,
    };
    match keys.select(p.kid(), p.alg) {
        Selection::UnknownKid => Err(fail(TokenError::UnknownKid, true)),
        Selection::KidTypeMismatch => Err(fail(TokenError::UnknownKid, false)),
        Selection::NoFittingKey => Err(fail(TokenError::Signature, false)),
        Selection::Keys(candidates) => {
            if candidates
                .iter()
                .any(|k| k.verify(p.alg, p.jws.signing_input, &p.jws.signature))
            {
                Ok(())
            } else {
                Err(fail(TokenError::Signature, false))
            }
        }
    }
}

/// Steps 6–8 on a token whose signature verified: legacy format, time, audience, identity.
pub fn check_claims(
    p: Prepared<'_>,
    cfg: &TokenConfig,
    now: u64,
) -> Result<ValidatedToken, TokenError> {
    let c = p.claims;
    let issuer = c.iss.clone().unwrap_or_default();
    if c.is_legacy() {
        return legacy(c, issuer, cfg, now);
    }
    let exp = c.exp.ok_or(TokenError::MissingExp)?.0;
    check_times(Some(exp), c.nbf.map(|d| d.0), c.iat.map(|d| d.0), cfg, now)?;
    match &c.aud {
        Some(aud) if aud.intersects(&cfg.audiences) => {}
        _ => return Err(TokenError::Audience),
    }
    let k = c.kubernetes.ok_or(TokenError::Claims)?;
    let ns = k.namespace.unwrap_or_default();
    let sa = k.serviceaccount.ok_or(TokenError::Claims)?;
    check_identity(&ns, &sa.name, &sa.uid, c.sub.as_deref())?;
    let bound = |r: Option<claims::Ref>| -> Result<Option<BoundObject>, TokenError> {
        match r {
            None => Ok(None),
            Some(r) if r.name.is_empty() => Err(TokenError::Claims),
            Some(r) => Ok(Some(BoundObject {
                name: r.name,
                uid: r.uid,
            })),
        }
    };
    let (pod, node, secret) = (bound(k.pod)?, bound(k.node)?, bound(k.secret)?);
    if secret.is_some() && (pod.is_some() || node.is_some()) {
        return Err(TokenError::Claims);
    }
    Ok(ValidatedToken {
        issuer,
        namespace: ns,
        service_account: sa.name,
        sa_uid: sa.uid,
        pod,
        node,
        secret,
        jti: c.jti,
        exp: Some(exp),
        iat: c.iat.map(|d| d.0),
        legacy: false,
    })
}

/// Secret-based tokens: refused unless `allow_legacy` and the issuer is exactly
/// `kubernetes/serviceaccount` (which must then be configured).
fn legacy(
    c: Claims,
    issuer: String,
    cfg: &TokenConfig,
    now: u64,
) -> Result<ValidatedToken, TokenError> {
    if !cfg.allow_legacy || issuer != LEGACY_ISSUER {
        return Err(TokenError::LegacyToken);
    }
    // Legacy tokens carry no times; check any that are present anyway.
    check_times(
        c.exp.map(|d| d.0),
        c.nbf.map(|d| d.0),
        c.iat.map(|d| d.0),
        cfg,
        now,
    )?;
    if let Some(aud) = &c.aud {
        if !aud.intersects(&cfg.audiences) {
            return Err(TokenError::Audience);
        }
    }
    let ns = c.legacy_namespace.unwrap_or_default();
    let name = c.legacy_sa_name.unwrap_or_default();
    let uid = c.legacy_sa_uid.unwrap_or_default();
    let secret = c.legacy_secret_name.ok_or(TokenError::Claims)?;
    check_identity(&ns, &name, &uid, c.sub.as_deref())?;
    if !is_dns_subdomain(&secret) {
        return Err(TokenError::Claims);
    }
    Ok(ValidatedToken {
        issuer,
        namespace: ns,
        service_account: name,
        sa_uid: uid,
        pod: None,
        node: None,
        secret: Some(BoundObject {
            name: secret,
            uid: String::new(),
        }),
        jti: c.jti,
        exp: c.exp.map(|d| d.0),
        iat: c.iat.map(|d| d.0),
        legacy: true,
    })
}

fn check_times(
    exp: Option<u64>,
    nbf: Option<u64>,
    iat: Option<u64>,
    cfg: &TokenConfig,
    now: u64,
) -> Result<(), TokenError> {
    let l = cfg.leeway_secs;
    if exp.is_some_and(|exp| now.saturating_sub(l) > exp) {
        return Err(TokenError::Expired);
    }
    if nbf.is_some_and(|nbf| now.saturating_add(l) < nbf) {
        return Err(TokenError::NotYetValid);
    }
    if iat.is_some_and(|iat| now.saturating_add(l) < iat) {
        return Err(TokenError::IssuedInFuture);
    }
    Ok(())
}

fn check_identity(ns: &str, name: &str, uid: &str, sub: Option<&str>) -> Result<(), TokenError> {
    if !is_dns_label(ns) || !is_dns_subdomain(name) || uid.is_empty() {
        return Err(TokenError::Claims);
    }
    match sub {
        Some(sub) if claims::sub_matches(sub, ns, name) => Ok(()),
        _ => Err(TokenError::Claims),
    }
}

/// The whole pipeline against a fixed set of keys (no refresh).
pub fn validate(
    token: &str,
    cfg: &TokenConfig,
    keys: &dyn KeyLookup,
    now: u64,
) -> Result<ValidatedToken, TokenError> {
    let p = prepare(token, cfg)?;
    let set = keys.key_set(p.issuer()).unwrap_or_default();
    verify_signature(&p, &set).map_err(|f| f.error)?;
    check_claims(p, cfg, now)
}
