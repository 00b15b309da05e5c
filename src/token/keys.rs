//! Signature algorithms and public keys: JWKS documents are turned into ring verification keys
//! once, at load time, so the hot path only runs the signature check. Unusable keys (unknown
//! `kty`, P-521, RSA < 2048 bits, bad material, `use` other than `sig`) are skipped and reported
//! back to the caller; they never fail the whole set. Never fetches anything, never logs.

use data_encoding::BASE64URL_NOPAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;

/// Most keys accepted in one JWKS document.
pub const MAX_KEYS: usize = 100;

/// The JWS algorithms we verify. Everything else (`none`, `HS*`, `PS*`, `ES512`, ...) is
/// refused before any key is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    ES256,
    ES384,
}

impl Alg {
    pub fn from_name(s: &str) -> Option<Alg> {
        Some(match s {
            "RS256" => Alg::RS256,
            "RS384" => Alg::RS384,
            "RS512" => Alg::RS512,
            "ES256" => Alg::ES256,
            "ES384" => Alg::ES384,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
}

/// Verification material, parsed once.
#[derive(Debug)]
pub enum KeyMaterial {
    Rsa(RsaPublicKeyComponents<Vec<u8>>),
    /// Uncompressed point `0x04 ‖ x ‖ y`, already checked to be on the curve.
    Ec(Curve, Vec<u8>),
}

/// One usable public key of an issuer.
#[derive(Debug)]
pub struct PublicKey {
    pub kid: Option<String>,
    /// The JWK's `alg`, if it named one; the token's `alg` must then be the same.
    pub alg: Option<Alg>,
    pub material: KeyMaterial,
}

impl PublicKey {
    /// Whether this key may verify a token signed with `alg` (type, curve and JWK `alg`).
    pub fn fits(&self, alg: Alg) -> bool {
        if self.alg.is_some_and(|a| a != alg) {
            return false;
        }
        matches!(
            (&self.material, alg),
            (KeyMaterial::Rsa(_), Alg::RS256 | Alg::RS384 | Alg::RS512)
                | (KeyMaterial::Ec(Curve::P256, _), Alg::ES256)
                | (KeyMaterial::Ec(Curve::P384, _), Alg::ES384)
        )
    }

    /// Verifies `sig` over `msg`. The caller has checked [`PublicKey::fits`].
    pub fn verify(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        match (&self.material, alg) {
            (KeyMaterial::Rsa(k), Alg::RS256) => k
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, msg, sig)
                .is_ok(),
            (KeyMaterial::Rsa(k), Alg::RS384) => k
                .verify(&signature::RSA_PKCS1_2048_8192_SHA384, msg, sig)
                .is_ok(),
            (KeyMaterial::Rsa(k), Alg::RS512) => k
                .verify(&signature::RSA_PKCS1_2048_8192_SHA512, msg, sig)
                .is_ok(),
            (KeyMaterial::Ec(Curve::P256, p), Alg::ES256) => {
                sig.len() == 64
                    && UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, p)
                        .verify(msg, sig)
                        .is_ok()
            }
            (KeyMaterial::Ec(Curve::P384, p), Alg::ES384) => {
                sig.len() == 96
                    && UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, p)
                        .verify(msg, sig)
                        .is_ok()
            }
            _ => false,
        }
    }
}

/// The keys of one issuer.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<PublicKey>,
}

/// What key selection found for a token.
#[derive(Debug)]
pub enum Selection<'a> {
    /// Candidate keys to try (non-empty).
    Keys(Vec<&'a PublicKey>),
    /// The token names a kid this set does not hold: a refresh may help.
    UnknownKid,
    /// The kid exists but none of its keys fits the alg: a refresh will not help.
    KidTypeMismatch,
    /// No kid, and no key of the right type.
    NoFittingKey,
}

impl KeySet {
    pub fn new(keys: Vec<PublicKey>) -> Self {
        KeySet { keys }
    }
    pub fn len(&self) -> usize {
        self.keys.len()
    }
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
    /// The key ids, in JWKS order (keys without one are left out).
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().filter_map(|k| k.kid.as_deref())
    }
    pub fn contains_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// kube-apiserver semantics: with a kid only keys carrying that kid (of a fitting type);
    /// without one, every fitting key. Never falls back from a named kid to other keys.
    pub fn select(&self, kid: Option<&str>, alg: Alg) -> Selection<'_> {
        match kid {
            Some(kid) => {
                let named: Vec<&PublicKey> = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .collect();
                if named.is_empty() {
                    return Selection::UnknownKid;
                }
                let fitting: Vec<&PublicKey> = named.into_iter().filter(|k| k.fits(alg)).collect();
                if fitting.is_empty() {
                    Selection::KidTypeMismatch
                } else {
                    Selection::Keys(fitting)
                }
            }
            None => {
                let fitting: Vec<&PublicKey> = self.keys.iter().filter(|k| k.fits(alg)).collect();
                if fitting.is_empty() {
                    Selection::NoFittingKey
                } else {
                    Selection::Keys(fitting)
                }
            }
        }
    }

    /// Parses a JWKS document. Returns the usable keys and one line per skipped key (no key
    /// material in it). Fails only if the document itself is not a JWKS or holds more than
    /// [`MAX_KEYS`] keys.
    pub fn from_jwks_json(json: &[u8]) -> Result<(KeySet, Vec<String>), String> {
        #[derive(Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        if !super::jws::is_object(json) {
            return Err("JWKS is not a JSON object".into());
        }
        let doc: Doc = serde_json::from_slice(json).map_err(|e| format!("JWKS: {e}"))?;
        if doc.keys.len() > MAX_KEYS {
            return Err(format!(
                "JWKS holds {} keys, more than {MAX_KEYS}",
                doc.keys.len()
            ));
        }
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (i, v) in doc.keys.into_iter().enumerate() {
            let kid = v.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
            match serde_json::from_value::<Jwk>(v)
                .map_err(|e| format!("not a JWK: {e}"))
                .and_then(jwk_to_key)
            {
                Ok(k) => keys.push(k),
                Err(why) => skipped.push(format!(
                    "key {i} (kid {}): {why}",
                    kid.as_deref().unwrap_or("-")
                )),
            }
        }
        Ok((KeySet { keys }, skipped))
    }
}

#[derive(Debug, Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

fn jwk_to_key(j: Jwk) -> Result<PublicKey, String> {
    if let Some(u) = &j.use_ {
        if u != "sig" {
            return Err(format!("use {u:?} is not sig"));
        }
    }
    let alg = match &j.alg {
        None => None,
        Some(a) => Some(Alg::from_name(a).ok_or_else(|| format!("unsupported alg {a:?}"))?),
    };
    let material = match j.kty.as_str() {
        "RSA" => {
            let n = strip_zeros(b64(j.n.as_deref(), "n")?);
            let e = strip_zeros(b64(j.e.as_deref(), "e")?);
            let bits = bit_len(&n);
            if bits < 2048 {
                return Err(format!("RSA modulus of {bits} bits (< 2048)"));
            }
            if bits > 8192 {
                return Err(format!("RSA modulus of {bits} bits (> 8192)"));
            }
            if e.is_empty() || e.len() > 4 || e[e.len() - 1] & 1 == 0 {
                return Err("bad RSA exponent".into());
            }
            KeyMaterial::Rsa(RsaPublicKeyComponents { n, e })
        }
        "EC" => {
            let (curve, len, agreement) = match j.crv.as_deref() {
                Some("P-256") => (Curve::P256, 32, &ring::agreement::ECDH_P256),
                Some("P-384") => (Curve::P384, 48, &ring::agreement::ECDH_P384),
                other => return Err(format!("unsupported curve {other:?}")),
            };
            let x = left_pad(b64(j.x.as_deref(), "x")?, len)?;
            let y = left_pad(b64(j.y.as_deref(), "y")?, len)?;
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            if !on_curve(agreement, &point) {
                return Err("EC point not on the curve".into());
            }
            KeyMaterial::Ec(curve, point)
        }
        other => return Err(format!("unsupported kty {other:?}")),
    };
    let key = PublicKey {
        kid: j.kid,
        alg,
        material,
    };
    if let Some(a) = alg {
        if !key.fits(a) {
            return Err(format!("alg {} does not fit the key type", a.name()));
        }
    }
    Ok(key)
}

fn b64(v: Option<&str>, name: &str) -> Result<Vec<u8>, String> {
    let v = v.ok_or_else(|| format!("missing {name}"))?;
    BASE64URL_NOPAD
        .decode(v.as_bytes())
        .map_err(|_| format!("{name} is not base64url"))
}

fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let nz = v.iter().position(|&b| b != 0).unwrap_or(v.len());
    v.drain(..nz);
    v
}

fn bit_len(v: &[u8]) -> usize {
    match v.first() {
        None => 0,
        Some(&b) => (v.len() - 1) * 8 + (8 - b.leading_zeros() as usize),
    }
}

fn left_pad(v: Vec<u8>, len: usize) -> Result<Vec<u8>, String> {
    if v.len() > len {
        return Err("EC coordinate too long".into());
    }
    let mut out = vec![0u8; len - v.len()];
    out.extend_from_slice(&v);
    Ok(out)
}

/// ring validates a peer point fully (on the curve, not the identity) before ECDH; an
/// ephemeral agreement is a cheap load-time check the signature API does not offer.
fn on_curve(alg: &'static ring::agreement::Algorithm, point: &[u8]) -> bool {
    let rng = ring::rand::SystemRandom::new();
    let Ok(private) = ring::agreement::EphemeralPrivateKey::generate(alg, &rng) else {
        return false;
    };
    ring::agreement::agree_ephemeral(
        private,
        &ring::agreement::UnparsedPublicKey::new(alg, point),
        |_| (),
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_N: &str = "249XwEo9k4tM8fMxV7zxOhcrP-WvXn917koM5Qr2ZXs4vo26e4ytdlrV0bQ9SlcLpQVSYjIxNfhTZdDt-ecIzshKuv1gKIxbbLQMOuK1eA_4HALyEkFgmS_tleLJrhc65tKPMGD-pKQ_xhmzRuCG51RoiMgbQxaCyYxGfNLpLAZK9L0Tctv9a0mJmGIYnIOQM4kC1A1I1n3EsXMWmeJUj7OTh_AjjCnMnkgvKT2tpKxYQ59PgDgU8Ssc7RDSmSkLxnrv-OrN80j6xrw0OjEiB4Ycr0PqfzZcvy8efTtFQ_Jnc4Bp1zUtFXt7-QeevePtQ2EcyELXE0i63T1CujRMWw";
    const EC_X: &str = "H6cuzP8XuD5wal6wf9M6xDljTOPLX2i8uIp_C_ASqiI";
    const EC_Y: &str = "BlHnikLV9PyEd6gl8k4T_3Wwoh6xd79XLoQTh2PAi1Y";

    fn set(keys: &str) -> (KeySet, Vec<String>) {
        KeySet::from_jwks_json(format!(r#"{{"keys":[{keys}]}}"#).as_bytes()).unwrap()
    }

    #[test]
    fn loads_rsa_and_ec_and_skips_the_unusable_rest() {
        let n_bytes = BASE64URL_NOPAD.decode(RSA_N.as_bytes()).unwrap();
        let mut zn = vec![0u8];
        zn.extend_from_slice(&n_bytes);
        let zn = BASE64URL_NOPAD.encode(&zn);
        let short_n = BASE64URL_NOPAD.encode(&n_bytes[..128]);
        let (ks, skipped) = set(&format!(
            r#"{{"kty":"RSA","kid":"r","n":"{RSA_N}","e":"AQAB","alg":"RS256","use":"sig"}},
               {{"kty":"RSA","kid":"rz","n":"{zn}","e":"AAEAAQ"}},
               {{"kty":"EC","kid":"e","crv":"P-256","x":"{EC_X}","y":"{EC_Y}"}},
               {{"kty":"EC","kid":"bad","crv":"P-256","x":"{EC_X}","y":"{EC_X}"}},
               {{"kty":"EC","kid":"p521","crv":"P-521","x":"AA","y":"AA"}},
               {{"kty":"RSA","kid":"short","n":"{short_n}","e":"AQAB"}},
               {{"kty":"RSA","kid":"enc","n":"{RSA_N}","e":"AQAB","use":"enc"}},
               {{"kty":"oct","kid":"hmac","k":"c2VjcmV0"}},
               {{"kty":"RSA","kid":"ps","n":"{RSA_N}","e":"AQAB","alg":"PS256"}},
               {{"kty":"RSA","kid":"misfit","n":"{RSA_N}","e":"AQAB","alg":"ES256"}},
               "not an object""#
        ));
        assert_eq!(ks.len(), 3, "{skipped:?}");
        assert_eq!(skipped.len(), 8, "{skipped:?}");
        assert!(ks.contains_kid("r") && ks.contains_kid("rz") && ks.contains_kid("e"));
        assert!(skipped.iter().all(|s| !s.contains(RSA_N)));
    }

    #[test]
    fn selection_follows_kube() {
        let (ks, _) = set(&format!(
            r#"{{"kty":"RSA","kid":"r","n":"{RSA_N}","e":"AQAB"}},
               {{"kty":"EC","kid":"e","crv":"P-256","x":"{EC_X}","y":"{EC_Y}"}}"#
        ));
        assert!(matches!(ks.select(Some("r"), Alg::RS256), Selection::Keys(k) if k.len() == 1));
        assert!(matches!(ks.select(Some("r"), Alg::RS512), Selection::Keys(k) if k.len() == 1));
        assert!(matches!(
            ks.select(Some("e"), Alg::RS256),
            Selection::KidTypeMismatch
        ));
        assert!(matches!(
            ks.select(Some("r"), Alg::ES256),
            Selection::KidTypeMismatch
        ));
        assert!(matches!(
            ks.select(Some("x"), Alg::RS256),
            Selection::UnknownKid
        ));
        assert!(matches!(ks.select(None, Alg::ES256), Selection::Keys(k) if k.len() == 1));
        assert!(matches!(
            ks.select(None, Alg::ES384),
            Selection::NoFittingKey
        ));
    }

    #[test]
    fn rejects_documents_that_are_not_key_sets() {
        assert!(KeySet::from_jwks_json(b"[]").is_err());
        assert!(KeySet::from_jwks_json(b"{}").is_err());
        assert!(KeySet::from_jwks_json(b"{\"keys\":{}}").is_err());
        let many = vec![r#"{"kty":"oct"}"#; MAX_KEYS + 1].join(",");
        assert!(KeySet::from_jwks_json(format!(r#"{{"keys":[{many}]}}"#).as_bytes()).is_err());
    }

    #[test]
    fn alg_names_round_trip_and_refuse_the_rest() {
        for a in [Alg::RS256, Alg::RS384, Alg::RS512, Alg::ES256, Alg::ES384] {
            assert_eq!(Alg::from_name(a.name()), Some(a));
        }
        for n in ["none", "HS256", "PS256", "ES512", "rs256", "EdDSA", ""] {
            assert_eq!(Alg::from_name(n), None, "{n}");
        }
    }
}
