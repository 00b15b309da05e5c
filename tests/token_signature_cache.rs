//! The cache of verified signatures (`token::verified`) inside the `Validator`: a token seen
//! again skips the signature check only while the issuer's key set is unchanged; a removed key,
//! tampered bytes and expired claims are still refused. One test function, because it reads a
//! process-wide counter.

use std::sync::Arc;
use std::time::Duration;

use nats_k8s_callout::jwks::{IssuerSource, KeySource, KeyStore, StoreConfig};
use nats_k8s_callout::metrics::global;
use nats_k8s_callout::testkit::vectors::read;
use nats_k8s_callout::token::{TokenConfig, TokenError, Validator};

const ISS: &str = "https://kubernetes.default.svc.cluster.local";
/// Inside the k8s-testkeys validity range.
const NOW: u64 = 1_767_229_320;

fn hits() -> u64 {
    global()
        .counter(
            "nats_k8s_callout_token_signature_cache_hits_total",
            "Token validations that reused a signature verified earlier against the same key set.",
            &[],
        )
        .get()
}

#[test]
fn a_cached_signature_counts_only_while_the_key_set_is_unchanged() {
    let dir = std::env::temp_dir().join(format!("sigcache-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, read("k8s-testkeys/jwks.json")).unwrap();
    let store: Arc<KeyStore> = KeyStore::new(
        vec![IssuerSource {
            issuer: ISS.into(),
            source: KeySource::File(jwks.clone()),
        }],
        StoreConfig {
            unknown_kid_min_interval: Duration::ZERO,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    store.refresh(ISS).unwrap();
    let v = Validator::new(
        TokenConfig::new(vec![ISS.into()], vec!["nats".into()]),
        store.clone(),
    )
    .unwrap();
    let token = read("k8s-testkeys/valid_rs256_pod.jwt");

    let h0 = hits();
    assert!(v.validate(&token, NOW).is_ok());
    assert_eq!(hits(), h0, "the first validation verifies the signature");
    assert!(v.validate(&token, NOW).is_ok());
    assert!(v.validate(&format!("{token}\n"), NOW).is_ok());
    assert_eq!(
        hits(),
        h0 + 2,
        "the same token again reuses the verified signature"
    );

    // Claims are checked on every use: the same token after its expiry is refused.
    assert_eq!(
        v.validate(&token, 4_102_444_800 + 3600).unwrap_err(),
        TokenError::Expired
    );

    // Other bytes are another entry: a tampered signature is verified, and refused.
    let mut forged = token.trim().to_string();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(v.validate(&forged, NOW).unwrap_err(), TokenError::Signature);

    // The signing key is removed from the JWKS: the cached verification no longer counts.
    std::fs::write(&jwks, read("k8s-testkeys/jwks-only-other.json")).unwrap();
    store.refresh(ISS).unwrap();
    let h1 = hits();
    assert_eq!(v.validate(&token, NOW).unwrap_err(), TokenError::UnknownKid);
    assert_eq!(hits(), h1, "a changed key set never hits");

    // Keys back: verified again (a miss), then cached again.
    std::fs::write(&jwks, read("k8s-testkeys/jwks-rotated.json")).unwrap();
    store.refresh(ISS).unwrap();
    assert!(v.validate(&token, NOW).is_ok());
    assert_eq!(
        hits(),
        h1,
        "the first validation after a key change verifies"
    );
    assert!(v.validate(&token, NOW).is_ok());
    assert_eq!(hits(), h1 + 1);
    std::fs::remove_dir_all(&dir).ok();
}
