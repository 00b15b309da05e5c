//! XKey (curve25519, `xkv1`) sealing of callout requests and responses.
//!
//! Owns the service's curve key and a small cache of parsed server curve keys (a server keeps
//! one xkey per process, so the same few keys repeat). Must never log or expose the seed.
//!
//! Note: `nkeys::XKey::seal`/`open` recompute the X25519 shared secret on every call. Caching
//! the precomputed box per server key would need `crypto_box` directly, which is not one of
//! our dependencies; left for later.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use nkeys::XKey;

/// Most distinct server keys remembered; beyond that the cache is cleared and refilled.
const CACHE_MAX: usize = 64;

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

/// The service's curve key plus a cache of server public keys.
pub struct XKeyBox {
    own: XKey,
    public: String,
    peers: RwLock<HashMap<String, Arc<XKey>>>,
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
        let own = XKey::from_seed(seed.trim()).map_err(|_| XKeyError::Seed)?;
        let public = own.public_key();
        Ok(XKeyBox {
            own,
            public,
            peers: RwLock::new(HashMap::new()),
        })
    }

    /// Our public curve key (`X…`), to put into the server config / account JWT.
    pub fn public_key(&self) -> &str {
        &self.public
    }

    fn peer(&self, public: &str) -> Result<Arc<XKey>, XKeyError> {
        if let Some(k) = self
            .peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(public)
        {
            return Ok(k.clone());
        }
        let k = Arc::new(XKey::from_public_key(public).map_err(|_| XKeyError::PeerKey)?);
        let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
        if peers.len() >= CACHE_MAX {
            peers.clear();
        }
        peers.insert(public.to_string(), k.clone());
        Ok(k)
    }

    /// Open a box sealed by `sender` (the `Nats-Server-Xkey` header) to our key.
    pub fn open(&self, sealed: &[u8], sender: &str) -> Result<Vec<u8>, XKeyError> {
        let peer = self.peer(sender)?;
        self.own.open(sealed, &peer).map_err(|_| XKeyError::Open)
    }

    /// Seal `msg` from our key to `recipient` (the server's xkey).
    pub fn seal(&self, msg: &[u8], recipient: &str) -> Result<Vec<u8>, XKeyError> {
        let peer = self.peer(recipient)?;
        self.own.seal(msg, &peer).map_err(|_| XKeyError::Seal)
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
}
