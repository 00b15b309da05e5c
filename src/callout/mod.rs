//! The auth callout service: requests from `$SYS.REQ.USER.AUTH` in, signed responses out.
//!
//! Layout: `xkey` (curve sealing), `request` (open + verify + decode one request), `response`
//! (user JWT + response, signed), `process` (one request end to end, metrics), `service`
//! (subscription, bounded worker pool, drain).
//!
//! Owns the NATS side of every decision; the decision itself belongs to an
//! [`crate::authz::Decider`]. Must never log a token, password, seed or JWT, and must never
//! answer a request that failed verification with a user JWT.

pub mod process;
pub mod request;
pub mod response;
pub mod service;
pub mod xkey;

use std::fmt;

use crate::metrics::Registry;
use crate::secret::Secret;

pub use process::Processor;
pub use request::{RequestError, VerifiedRequest, XKEY_HEADER};
pub use response::{Placement, SignerError, Signers};
pub use service::{Callout, CalloutHandle};
pub use xkey::{XKeyBox, XKeyError};

/// The subject the server publishes authorization requests on.
pub const AUTH_SUBJECT: &str = "$SYS.REQ.USER.AUTH";
/// Default queue group, so several service instances share the requests.
pub const DEFAULT_QUEUE_GROUP: &str = "nats-k8s-callout";
/// Default number of worker threads.
pub const DEFAULT_WORKERS: usize = 4;
/// Default bound of the request queue between the NATS reader and the workers.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;

/// Settings of the callout service.
#[derive(Clone)]
pub struct CalloutConfig {
    /// Config mode (target account name) or operator mode (target account key).
    pub placement: Placement,
    /// Signs user JWTs. Config mode: the `auth_callout.issuer` seed. Operator mode: the target
    /// account seed or one of its signing-key seeds.
    pub user_signing_seed: Secret,
    /// Signs responses. Operator mode: the callout account seed or one of its signing-key
    /// seeds. `None` = `user_signing_seed` (config mode, or operator mode when users are placed
    /// into the callout account itself).
    pub response_signing_seed: Option<Secret>,
    /// The callout account key the server names as request `sub` (config: the issuer; operator:
    /// the callout account). `None` = the public key of the response signer, which is right
    /// unless the response is signed by a signing key.
    pub callout_account: Option<String>,
    /// Our curve seed (`SX…`). When set, only sealed requests are accepted.
    pub xkey_seed: Option<Secret>,
    pub queue_group: String,
    pub workers: usize,
    /// Requests waiting for a worker, at most (the subscription's bound).
    pub queue_capacity: usize,
    /// Where metrics go (the process-wide registry unless a test brings its own).
    pub metrics: &'static Registry,
    /// The level at which admissions are logged (denials are always `warn`).
    pub admission_log_level: log::Level,
    /// Where each worker thread registers its heartbeat (liveness), if anywhere.
    pub health: Option<std::sync::Arc<crate::http::Health>>,
}

impl fmt::Debug for CalloutConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CalloutConfig")
            .field("placement", &self.placement)
            .field("callout_account", &self.callout_account)
            .field("xkey", &self.xkey_seed.is_some())
            .field("queue_group", &self.queue_group)
            .field("workers", &self.workers)
            .field("queue_capacity", &self.queue_capacity)
            .finish_non_exhaustive()
    }
}

impl CalloutConfig {
    /// Defaults for everything but the placement and the user-signing seed.
    pub fn new(placement: Placement, user_signing_seed: Secret) -> Self {
        CalloutConfig {
            placement,
            user_signing_seed,
            response_signing_seed: None,
            callout_account: None,
            xkey_seed: None,
            queue_group: DEFAULT_QUEUE_GROUP.to_string(),
            workers: DEFAULT_WORKERS,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            metrics: crate::metrics::global(),
            admission_log_level: log::Level::Info,
            health: None,
        }
    }
}

/// Why the callout could not start.
#[derive(Debug)]
pub enum CalloutError {
    Signer(SignerError),
    Xkey(XKeyError),
    /// `workers` or `queue_capacity` is zero.
    Sizing,
    /// Subscribing failed (the NATS client's reason code).
    Subscribe(&'static str),
}

impl CalloutError {
    pub fn code(&self) -> &'static str {
        match self {
            CalloutError::Signer(e) => e.code(),
            CalloutError::Xkey(e) => e.code(),
            CalloutError::Sizing => "callout_sizing",
            CalloutError::Subscribe(c) => c,
        }
    }
}

impl fmt::Display for CalloutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl std::error::Error for CalloutError {}
