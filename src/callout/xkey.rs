//! XKey (curve25519, `xkv1`) sealing of callout requests and responses.
//!
//! Owns the service's curve key and, per server curve key, the precomputed box (the X25519
//! shared secret): a server keeps one xkey per process, so the same few keys repeat and the
//! key agreement (about 1.3 M instructions, more than half of an encrypted decision) is done
//! once per server instead of twice per request. Wire format as nkeys / nats-server:
//! `"xkv1"` ‖ 24-byte nonce ‖ XSalsa20-Poly1305 box. Must never log or expose the seed.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use crypto_box::aead::Aead;
use crypto_box::{PublicKey, SalsaBox, SecretKey};
use nkeys::XKey;

/// Most distinct server keys remembered; beyond that the cache is cleared and refilled.
const CACHE_MAX: usize = 64;
const VERSION: &[u8] = b"xkv1";
const NONCE_LEN: usize = 24;

/// Why sealing or opening failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XKeyError {
    /// Our seed is not a valid `SX…` curve seed.
    Seed,
    /// The peer key is not a valid `X…` public curve key.
    PeerKey,
    /// Not an `xkv1` box for us from that sender, or tampered.
    Open,
    /// Sealing failed.
    Seal,
}

impl XKeyError {
    pub fn code(&self) -> &'static str {
        match self {
            XKeyError::Seed => "xkey_seed",
            XKeyError::PeerKey => "xkey_peer_key",
            XKeyError::Open => "xkey_open",
            XKeyError::Seal => "xkey_seal",
        }
    }
}

impl fmt::Display for XKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl std::error::Error for XKeyError {}

/// The service's curve key plus the boxes shared with the servers seen so far.
pub struct XKeyBox {
    secret: SecretKey,
    public: String,
    boxes: RwLock<HashMap<String, Arc<SalsaBox>>>,
}

impl fmt::Debug for XKeyBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XKeyBox")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl XKeyBox {
    /// From an `SX…` seed.
    pub fn from_seed(seed: &str) -> Result<Self, XKeyError> {
        let seed = seed.trim();
        // nkeys checks the prefix (a curve seed) and the checksum.
        let own = XKey::from_seed(seed).map_err(|_| XKeyError::Seed)?;
        let (_, raw) = nkeys::decode_seed(seed).map_err(|_| XKeyError::Seed)?;
        Ok(XKeyBox {
            secret: SecretKey::from_bytes(raw),
            public: own.public_key(),
            boxes: RwLock::new(HashMap::new()),
        })
    }

    /// Our public curve key (`X…`), to put into the server config / account JWT.
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// The box shared with `peer` (an `X…` key), computed once.
    fn shared(&self, peer: &str) -> Result<Arc<SalsaBox>, XKeyError> {
        if let Some(b) = self
            .boxes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
        {
            return Ok(b.clone());
        }
        // nkeys checks the prefix (a curve key) and the checksum.
        XKey::from_public_key(peer).map_err(|_| XKeyError::PeerKey)?;
        let (_, raw) = nkeys::from_public_key(peer).map_err(|_| XKeyError::PeerKey)?;
        let b = Arc::new(SalsaBox::new(&PublicKey::from(raw), &self.secret));
        let mut boxes = self.boxes.write().unwrap_or_else(|p| p.into_inner());
        if boxes.len() >= CACHE_MAX {
            boxes.clear();
        }
        boxes.insert(peer.to_string(), b.clone());
        Ok(b)
    }

    /// Open a box sealed by `sender` (the `Nats-Server-Xkey` header) to our key.
    pub fn open(&self, sealed: &[u8], sender: &str) -> Result<Vec<u8>, XKeyError> {
        let b = self.shared(sender)?;
        let rest = sealed.strip_prefix(VERSION).ok_or(XKeyError::Open)?;
        if rest.len() <= NONCE_LEN {
            return Err(XKeyError::Open);
        }
        let (nonce, boxed) = rest.split_at(NONCE_LEN);
        b.decrypt(nonce.into(), boxed).map_err(|_| XKeyError::Open)
    }

    /// Seal `msg` from our key to `recipient` (the server's xkey), with a random nonce.
    pub fn seal(&self, msg: &[u8], recipient: &str) -> Result<Vec<u8>, XKeyError> {
        use ring::rand::SecureRandom;
        let b = self.shared(recipient)?;
        let mut nonce = [0u8; NONCE_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| XKeyError::Seal)?;
        let boxed = b
            .encrypt((&nonce).into(), msg)
            .map_err(|_| XKeyError::Seal)?;
        let mut out = Vec::with_capacity(VERSION.len() + NONCE_LEN + boxed.len());
        out.extend_from_slice(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&boxed);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open_interoperate_with_nkeys() {
        let server = XKey::new();
        let service = XKey::new();
        let b = XKeyBox::from_seed(&service.seed().unwrap()).unwrap();
        assert_eq!(b.public_key(), service.public_key());

        // Server → service, sealed by the nkeys crate directly.
        let sealed = server.seal(b"request", &service).unwrap();
        assert!(sealed.starts_with(b"xkv1"));
        assert_eq!(b.open(&sealed, &server.public_key()).unwrap(), b"request");
        // Twice, through the cache.
        assert_eq!(b.open(&sealed, &server.public_key()).unwrap(), b"request");

        // Service → server, opened by the nkeys crate directly.
        let out = b.seal(b"response", &server.public_key()).unwrap();
        let pub_service = XKey::from_public_key(&service.public_key()).unwrap();
        assert_eq!(server.open(&out, &pub_service).unwrap(), b"response");
    }

    #[test]
    fn wrong_sender_tamper_and_garbage_are_refused() {
        let server = XKey::new();
        let other = XKey::new();
        let service = XKey::new();
        let b = XKeyBox::from_seed(&service.seed().unwrap()).unwrap();
        let sealed = server.seal(b"request", &service).unwrap();
        assert_eq!(
            b.open(&sealed, &other.public_key()).unwrap_err(),
            XKeyError::Open
        );
        let mut t = sealed.clone();
        let n = t.len() - 1;
        t[n] ^= 1;
        assert_eq!(
            b.open(&t, &server.public_key()).unwrap_err(),
            XKeyError::Open
        );
        assert_eq!(
            b.open(b"eyJ0eXAi.plain.jwt", &server.public_key())
                .unwrap_err(),
            XKeyError::Open
        );
        assert_eq!(
            b.open(&sealed, "not-a-key").unwrap_err(),
            XKeyError::PeerKey
        );
        assert_eq!(
            XKeyBox::from_seed("SUnotaseed").unwrap_err(),
            XKeyError::Seed
        );
        // A box sealed to someone else.
        let sealed_other = server.seal(b"request", &other).unwrap();
        assert_eq!(
            b.open(&sealed_other, &server.public_key()).unwrap_err(),
            XKeyError::Open
        );
    }

    #[test]
    fn every_seal_has_a_fresh_nonce_and_short_boxes_are_refused() {
        let server = XKey::new();
        let service = XKey::new();
        let b = XKeyBox::from_seed(&service.seed().unwrap()).unwrap();
        let one = b.seal(b"same", &server.public_key()).unwrap();
        let two = b.seal(b"same", &server.public_key()).unwrap();
        assert_ne!(one[4..28], two[4..28], "nonces repeat");
        assert_ne!(one, two);
        let mut short = b"xkv1".to_vec();
        short.extend_from_slice(&[0u8; NONCE_LEN]);
        assert_eq!(
            b.open(&short, &server.public_key()).unwrap_err(),
            XKeyError::Open
        );
        // A seed of another kind is not a curve seed.
        let user_seed = nkeys::KeyPair::new_user().seed().unwrap();
        assert_eq!(XKeyBox::from_seed(&user_seed).unwrap_err(), XKeyError::Seed);
        // A public key of another kind is not a curve key.
        let account = nkeys::KeyPair::new_account().public_key();
        assert_eq!(b.seal(b"x", &account).unwrap_err(), XKeyError::PeerKey);
    }
}
