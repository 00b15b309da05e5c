//! Signing keys of the token issuers: one key set per issuer (`store`), where each comes from
//! (`source`: JWKS URL, OIDC discovery, file) and the thread that keeps them fresh
//! (`refresh`). See k8s-side.md §3.5 for the rules.
//!
//! Must never: empty a key set because a fetch failed; refresh on a signature failure with a
//! known kid; send our ServiceAccount token anywhere but https to the configured origin; log
//! tokens or key material.

pub mod refresh;
pub mod source;
pub mod store;

pub use refresh::{start_refresher, start_refresher_with_health, RefresherHandle};
pub use source::{default_http, JwksError, KeySource, JWKS_ACCEPT, MAX_BODY_BYTES};
pub use store::{IssuerSource, KeyStore, StoreConfig};
