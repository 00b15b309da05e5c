//! Signatures already verified: a token presented again (every reconnect of a pod presents the
//! same projected token until the kubelet rotates it) skips the public-key operation, which is
//! the most expensive part of its validation (RS256 ≈ 20 µs, ES256 ≈ 55 µs).
//!
//! An entry says only "these exact signed bytes and this signature verified against this exact
//! key set". It matches only while the issuer's key set is the same object (`Arc::ptr_eq`; the
//! entry holds the set, so its address cannot be reused): any JWKS change, rotation or key
//! removal makes every entry of that issuer miss. The claims (`exp`, `nbf`, `aud`, …) are
//! checked on every use, never cached. kube-apiserver caches whole successful authentications
//! for 10 s; this caches less.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::jws::Jws;
use super::KeySet;
use crate::metrics::{global, Counter};

/// Entries at most; when full, the cache is emptied (a reconnect storm refills it at once).
const MAX_ENTRIES: usize = 16_384;
/// How long an entry is trusted, also while the key set is unchanged.
const TTL: Duration = Duration::from_secs(300);

struct Entry {
    keys: Arc<KeySet>,
    at: Instant,
}

/// The cache; shared by the decision workers through the `Validator`.
pub struct VerifiedSignatures {
    entries: RwLock<HashMap<[u8; 32], Entry>>,
    hits: Arc<Counter>,
}

impl std::fmt::Debug for VerifiedSignatures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedSignatures")
            .field("entries", &self.len())
            .finish()
    }
}

impl Default for VerifiedSignatures {
    fn default() -> Self {
        VerifiedSignatures {
            entries: RwLock::new(HashMap::new()),
            hits: global().counter(
                "nats_k8s_callout_token_signature_cache_hits_total",
                "Token validations that reused a signature verified earlier against the same key set.",
                &[],
            ),
        }
    }
}

/// What identifies a signed token: SHA-256 over the signed bytes and the signature.
pub fn digest(jws: &Jws<'_>) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(jws.signing_input);
    // The signing input is base64url and dots only, so a 0 byte separates unambiguously.
    ctx.update(&[0]);
    ctx.update(&jws.signature);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl VerifiedSignatures {
    /// Was this token's signature verified against exactly `keys`, recently?
    pub fn contains(&self, digest: &[u8; 32], keys: &Arc<KeySet>) -> bool {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let hit = entries
            .get(digest)
            .is_some_and(|e| Arc::ptr_eq(&e.keys, keys) && e.at.elapsed() < TTL);
        if hit {
            self.hits.inc();
        }
        hit
    }

    /// Remember that the signature verified against `keys`.
    pub fn insert(&self, digest: [u8; 32], keys: Arc<KeySet>) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(
            digest,
            Entry {
                keys,
                at: Instant::now(),
            },
        );
    }

    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_matches_only_the_same_key_set_object() {
        let c = VerifiedSignatures::default();
        let a = Arc::new(KeySet::default());
        let b = Arc::new(KeySet::default());
        c.insert([1; 32], a.clone());
        assert!(c.contains(&[1; 32], &a));
        assert!(
            !c.contains(&[1; 32], &b),
            "an equal but different key set is a miss"
        );
        assert!(!c.contains(&[2; 32], &a), "another token is a miss");
    }

    #[test]
    fn the_cache_is_bounded() {
        let c = VerifiedSignatures::default();
        let k = Arc::new(KeySet::default());
        for i in 0..(MAX_ENTRIES + 10) {
            let mut d = [0u8; 32];
            d[..8].copy_from_slice(&(i as u64).to_le_bytes());
            c.insert(d, k.clone());
        }
        assert!(c.len() <= MAX_ENTRIES);
    }

    #[test]
    fn the_digest_covers_the_signature_and_the_signed_bytes() {
        let t1 = "eyJhbGciOiJSUzI1NiJ9.eyJhIjoxfQ.AAAA";
        let t2 = "eyJhbGciOiJSUzI1NiJ9.eyJhIjoxfQ.AAAB";
        let t3 = "eyJhbGciOiJSUzI1NiJ9.eyJhIjoyfQ.AAAA";
        let d = |t| digest(&super::super::jws::parse(t).unwrap());
        assert_ne!(d(t1), d(t2));
        assert_ne!(d(t1), d(t3));
        assert_eq!(
            d(t1),
            d(&format!("{t1}\n")),
            "surrounding whitespace is not part of a token"
        );
    }
}
