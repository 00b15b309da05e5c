//! Token validation against every vector under `shared/vectors/` (read from the files), tokens
//! minted at test time with the Kubernetes test keys for the boundaries, and a seeded mutation
//! fuzzer over the parser and verifier.
//!
//! Vectors are found at `$NATS_K8S_VECTORS_DIR`, else `<CARGO_MANIFEST_DIR>/../shared/vectors`.

use std::collections::HashMap;
use std::sync::Arc;

use data_encoding::{BASE64, BASE64URL_NOPAD};
use nats_k8s_callout::jwks::{IssuerSource, KeySource, KeyStore, StoreConfig};
use nats_k8s_callout::testkit::vectors::{self, read};
use nats_k8s_callout::token::validate::validate;
use nats_k8s_callout::token::{KeySet, TokenConfig, TokenError, ValidatedToken, Validator};
use ring::signature::{self, EcdsaKeyPair, RsaKeyPair};
use serde_json::{json, Value};

const K8S_ISS: &str = "https://kubernetes.default.svc.cluster.local";
const LEGACY_ISS: &str = "kubernetes/serviceaccount";
/// 2026-01-01T01:02:00Z, the start of the k8s-testkeys validity range.
const K8S_NOW: u64 = 1_767_229_320;
const RSA_KID: &str = "JHJehTTTZlsspKHT-GaJxK7Kd1NQgZJu3fyK6K_QDYU";
const EC_KID: &str = "SoABiieYuNx4UdqYvZRVeuC6SihxgLrhLy9peHMHpTc";

fn key_set(rel: &str) -> Arc<KeySet> {
    let (set, _skipped) = KeySet::from_jwks_json(read(rel).as_bytes()).unwrap();
    Arc::new(set)
}

fn keys(pairs: &[(&str, &str)]) -> HashMap<String, Arc<KeySet>> {
    pairs
        .iter()
        .map(|(iss, rel)| (iss.to_string(), key_set(rel)))
        .collect()
}

fn cfg(issuers: &[&str], aud: &str) -> TokenConfig {
    TokenConfig::new(
        issuers.iter().map(|s| s.to_string()).collect(),
        vec![aud.to_string()],
    )
}

/// Both the token as stored and with the trailing newline a raw file read would give.
fn check_both(
    token: &str,
    f: impl Fn(&str) -> Result<ValidatedToken, TokenError>,
) -> Result<ValidatedToken, TokenError> {
    let a = f(token);
    let b = f(&format!("{token}\n"));
    assert_eq!(a, b, "trailing newline changed the outcome");
    a
}

/// The reason codes named in an `expected.json` `reason_code` text.
fn codes_in(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_lowercase() || c == '_'))
        .filter(|w| w.len() > 2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn k8s_testkeys_vectors_pure_and_through_the_validator() {
    let expected: Value = serde_json::from_str(&read("k8s-testkeys/expected.json")).unwrap();
    let vecs = expected["vectors"].as_array().unwrap();
    assert!(
        vecs.len() >= 26,
        "expected.json lists {} vectors",
        vecs.len()
    );
    let c = cfg(&[K8S_ISS], "nats");
    let map = keys(&[(K8S_ISS, "k8s-testkeys/jwks.json")]);

    let store = KeyStore::new(
        vec![IssuerSource {
            issuer: K8S_ISS.into(),
            source: KeySource::File(vectors::dir().join("k8s-testkeys/jwks.json")),
        }],
        StoreConfig::default(),
    )
    .unwrap();
    assert!(!store.ready());
    store.refresh(K8S_ISS).unwrap();
    assert!(store.ready());
    let validator = Validator::new(c.clone(), store).unwrap();

    let (mut accepted, mut rejected) = (0, 0);
    for v in vecs {
        let file = v["file"].as_str().unwrap();
        let expect = v["expect"].as_str().unwrap();
        let token = read(&format!("k8s-testkeys/{file}"));
        for now in [K8S_NOW, nats_k8s_callout::clock::unix_now()] {
            let pure = check_both(&token, |t| validate(t, &c, &map, now));
            let via = check_both(&token, |t| validator.validate(t, now));
            assert_eq!(pure, via, "{file}: Validator and pure pipeline disagree");
            let reason = v["reason_code"].as_str().unwrap_or("");
            match (expect, reason) {
                ("accept", _) => {
                    let id = pure.unwrap_or_else(|e| panic!("{file}: rejected {}", e.code()));
                    assert_eq!(id.issuer, K8S_ISS);
                    assert!(!id.sa_uid.is_empty() && !id.namespace.is_empty());
                    assert!(id.exp.is_some() && !id.legacy);
                }
                // Existence and UID of the ServiceAccount are checked by the decision against
                // the kube cache, not here: at the token layer these are valid tokens.
                (_, "sa_uid_mismatch" | "sa_not_found") => {
                    assert!(pure.is_ok(), "{file}: {:?}", pure.map_err(|e| e.code()))
                }
                _ => {
                    let err = pure.expect_err(file);
                    let allowed = codes_in(reason);
                    assert!(
                        allowed.iter().any(|a| a == err.code()),
                        "{file}: got {}, expected one of {allowed:?}",
                        err.code()
                    );
                }
            }
        }
        if expect == "accept" {
            accepted += 1;
        } else {
            rejected += 1;
        }
    }
    assert_eq!((accepted, rejected), (9, 17));

    // The identity of the reference token, field by field.
    let id = validate(&read("k8s-testkeys/valid_rs256_pod.jwt"), &c, &map, K8S_NOW).unwrap();
    assert_eq!(id.namespace, "shop");
    assert_eq!(id.service_account, "orders-api");
    assert_eq!(id.sa_uid, "6c0a5d1e-3f2b-4c8e-9a7d-1b2c3d4e5f60");
    assert_eq!(id.pod.as_ref().unwrap().name, "orders-api-7d9f8b6c5-x2k9q");
    assert_eq!(id.pod.unwrap().uid, "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0");
    assert_eq!(id.node.unwrap().name, "worker-1");
    assert_eq!(id.secret, None);
    assert_eq!(
        id.jti.as_deref(),
        Some("5b1e7c2a-8d4f-4e3b-9a6c-2f1d0e9b8a7c")
    );
    assert_eq!((id.exp, id.iat), (Some(4_102_444_800), Some(1_767_225_600)));
    let id = validate(
        &read("k8s-testkeys/valid_rs256_secret_bound.jwt"),
        &c,
        &map,
        K8S_NOW,
    )
    .unwrap();
    assert!(id.secret.is_some() && id.pod.is_none());
}

#[test]
fn k8s_testkeys_rotation_files_decide_acceptance() {
    let c = cfg(&[K8S_ISS], "nats");
    let tok = read("k8s-testkeys/valid_rs256_pod.jwt");
    let only_other = keys(&[(K8S_ISS, "k8s-testkeys/jwks-only-other.json")]);
    assert_eq!(
        validate(&tok, &c, &only_other, K8S_NOW).unwrap_err(),
        TokenError::UnknownKid
    );
    let rotated = keys(&[(K8S_ISS, "k8s-testkeys/jwks-rotated.json")]);
    assert!(validate(&tok, &c, &rotated, K8S_NOW).is_ok());
    // No kid: every key is tried; with only the other key none verifies.
    let nokid = read("k8s-testkeys/valid_rs256_no_kid.jwt");
    assert_eq!(
        validate(&nokid, &c, &only_other, K8S_NOW).unwrap_err(),
        TokenError::Signature
    );
    assert!(validate(&nokid, &c, &rotated, K8S_NOW).is_ok());
}

#[test]
fn legacy_token_with_kube_issuer_configured_is_refused_as_legacy() {
    let c = cfg(&[K8S_ISS, LEGACY_ISS], "nats");
    let map = keys(&[
        (K8S_ISS, "k8s-testkeys/jwks.json"),
        (LEGACY_ISS, "k8s-testkeys/jwks.json"),
    ]);
    let tok = read("k8s-testkeys/reject_legacy_no_aud.jwt");
    assert_eq!(
        validate(&tok, &c, &map, K8S_NOW).unwrap_err(),
        TokenError::LegacyToken
    );
    let mut lc = c.clone();
    lc.allow_legacy = true;
    let id = validate(&tok, &lc, &map, K8S_NOW).unwrap();
    assert!(id.legacy && id.exp.is_none());
    assert_eq!(
        (id.namespace.as_str(), id.service_account.as_str()),
        ("shop", "legacy-bot")
    );
}

#[test]
fn eks_peer_token_needs_a_clock_inside_its_lifetime() {
    let e: Value = serde_json::from_str(&read("eks-peer/expected.json")).unwrap();
    let iss = e["issuer"].as_str().unwrap();
    let (iat, exp) = (e["iat"].as_u64().unwrap(), e["exp"].as_u64().unwrap());
    let c = cfg(&[iss], e["audience"].as_str().unwrap());
    let map = keys(&[(iss, "eks-peer/jwks.json")]);
    assert_eq!(map[iss].len(), 13);
    let tok = read("eks-peer/token.jwt");
    for now in [iat - 60, iat, (iat + exp) / 2, exp, exp + 60] {
        let id = check_both(&tok, |t| validate(t, &c, &map, now)).unwrap();
        let want = &e["identity"];
        assert_eq!(id.namespace, want["namespace"].as_str().unwrap());
        assert_eq!(id.service_account, want["serviceaccount"].as_str().unwrap());
        assert_eq!(id.sa_uid, want["sa_uid"].as_str().unwrap());
        assert_eq!(id.pod.unwrap().name, want["pod"].as_str().unwrap());
        assert_eq!(id.node.unwrap().name, want["node"].as_str().unwrap());
        assert!(id.jti.is_some());
    }
    let real = nats_k8s_callout::clock::unix_now();
    assert_eq!(
        check_both(&tok, |t| validate(t, &c, &map, real)).unwrap_err(),
        TokenError::Expired
    );
    assert_eq!(
        validate(&tok, &c, &map, exp + 61).unwrap_err(),
        TokenError::Expired
    );
    assert_eq!(
        validate(&tok, &c, &map, iat - 61).unwrap_err(),
        TokenError::NotYetValid
    );
    // The wrong audience for this token.
    let nats = cfg(&[iss], "nats");
    assert_eq!(
        validate(&tok, &nats, &map, iat).unwrap_err(),
        TokenError::Audience
    );
}

#[test]
fn vault_minikube_projected_tokens() {
    let c = cfg(&[LEGACY_ISS], "kubernetes.default.svc");
    let map = keys(&[(LEGACY_ISS, "vault-minikube-projected/jwks.json")]);
    let tok = read("vault-minikube-projected/jwtProjectedData.jwt");
    for now in [1_700_000_000, nats_k8s_callout::clock::unix_now()] {
        let id = check_both(&tok, |t| validate(t, &c, &map, now)).unwrap();
        assert_eq!(
            (id.namespace.as_str(), id.service_account.as_str()),
            ("default", "default")
        );
        assert_eq!(id.sa_uid, "77c81ad7-1bea-4d94-9ca5-f5d7f3632331");
        let pod = id.pod.unwrap();
        assert_eq!(
            (pod.name.as_str(), pod.uid.as_str()),
            ("vault", "086c2f61-dea2-47bb-b5ca-63e63c5c9885")
        );
        assert!(!id.legacy);
    }
    assert_eq!(
        validate(&tok, &c, &map, 1_920_082_797 + 61).unwrap_err(),
        TokenError::Expired
    );
    let expired = read("vault-minikube-projected/jwtProjectedDataExpired.jwt");
    assert_eq!(
        check_both(&expired, |t| validate(t, &c, &map, 1_700_000_000)).unwrap_err(),
        TokenError::Expired
    );
    // The same tokens for audience nats are refused.
    let nats = cfg(&[LEGACY_ISS], "nats");
    assert_eq!(
        validate(&tok, &nats, &map, 1_700_000_000).unwrap_err(),
        TokenError::Audience
    );
}

#[test]
fn vault_legacy_tokens() {
    let map = keys(&[(LEGACY_ISS, "vault-legacy/jwks.json")]);
    assert_eq!(map[LEGACY_ISS].len(), 2, "RSA 2048 and P-384 keys load");
    let strict = cfg(&[LEGACY_ISS], "nats");
    let mut lax = strict.clone();
    lax.allow_legacy = true;
    let now = nats_k8s_callout::clock::unix_now();
    let data = read("vault-legacy/jwtData.jwt");
    let bad_sa = read("vault-legacy/jwtBadServiceAccount.jwt");
    let bad_key = read("vault-legacy/jwtWithBadSigningKey.jwt");
    let ecdsa = read("vault-legacy/jwtECDSASigned.jwt");

    // Default: legacy tokens are refused (after their signature verified).
    for t in [&data, &bad_sa] {
        assert_eq!(
            check_both(t, |t| validate(t, &strict, &map, now)).unwrap_err(),
            TokenError::LegacyToken
        );
    }
    // Opt-in: the RS256 one is accepted for the legacy issuer.
    let id = check_both(&data, |t| validate(t, &lax, &map, now)).unwrap();
    assert!(id.legacy);
    assert_eq!(id.issuer, LEGACY_ISS);
    assert_eq!(
        (id.namespace.as_str(), id.service_account.as_str()),
        ("default", "vault-auth")
    );
    assert_eq!(id.sa_uid, "d77f89bc-9055-11e7-a068-0800276d99bf");
    assert_eq!(id.secret.unwrap().name, "vault-auth-token-t5pcn");
    assert_eq!((id.exp, id.pod, id.jti), (None, None, None));
    assert!(
        validate(&bad_sa, &lax, &map, now).is_ok(),
        "SA existence is not ours"
    );
    // ES384 with a kid that names no JWKS key: no fallback to the matching P-384 key.
    for c in [&strict, &lax] {
        assert_eq!(
            check_both(&ecdsa, |t| validate(t, c, &map, now)).unwrap_err(),
            TokenError::UnknownKid
        );
        // The 1024-bit signing key is not in the set: no key verifies.
        assert_eq!(
            check_both(&bad_key, |t| validate(t, c, &map, now)).unwrap_err(),
            TokenError::Signature
        );
    }
    // Without the legacy issuer configured these are simply foreign tokens.
    let kube_only = cfg(&[K8S_ISS], "nats");
    assert_eq!(
        validate(&data, &kube_only, &map, now).unwrap_err(),
        TokenError::Issuer
    );
}

// ---------------------------------------------------------------------------------------------
// Tokens minted at test time with the Kubernetes test keys.

fn pem_der(pem: &str) -> Vec<u8> {
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("");
    BASE64.decode(b64.as_bytes()).unwrap()
}

fn der_tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = body.len();
    if n < 128 {
        out.push(n as u8);
    } else if n < 256 {
        out.extend_from_slice(&[0x81, n as u8]);
    } else {
        out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]);
    }
    out.extend_from_slice(body);
    out
}

/// SEC1 `EC PRIVATE KEY` (P-256) wrapped into PKCS#8 for ring.
fn sec1_to_pkcs8(sec1: &[u8]) -> Vec<u8> {
    let ec_public_key_oid = [0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    let p256_oid = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let alg = der_tlv(0x30, &[&ec_public_key_oid[..], &p256_oid[..]].concat());
    let body = [&[0x02, 0x01, 0x00][..], &alg, &der_tlv(0x04, sec1)].concat();
    der_tlv(0x30, &body)
}

struct Minter {
    rsa: RsaKeyPair,
    ec_pkcs8: Vec<u8>,
    rng: ring::rand::SystemRandom,
}

impl Minter {
    fn new() -> Self {
        let rsa = RsaKeyPair::from_der(&pem_der(&read("k8s-testkeys/rsa_private.pem"))).unwrap();
        let ec_pkcs8 = sec1_to_pkcs8(&pem_der(&read("k8s-testkeys/ecdsa_p256_private.pem")));
        let rng = ring::rand::SystemRandom::new();
        EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &ec_pkcs8, &rng)
            .expect("EC test key converts to PKCS#8");
        Minter { rsa, ec_pkcs8, rng }
    }

    fn input(header: &str, claims: &str) -> String {
        format!(
            "{}.{}",
            BASE64URL_NOPAD.encode(header.as_bytes()),
            BASE64URL_NOPAD.encode(claims.as_bytes())
        )
    }

    fn rsa_sig(&self, alg: &'static dyn signature::RsaEncoding, input: &str) -> Vec<u8> {
        let mut sig = vec![0u8; self.rsa.public().modulus_len()];
        self.rsa
            .sign(alg, &self.rng, input.as_bytes(), &mut sig)
            .unwrap();
        sig
    }

    fn ec_sig(&self, alg: &'static signature::EcdsaSigningAlgorithm, input: &str) -> Vec<u8> {
        let k = EcdsaKeyPair::from_pkcs8(alg, &self.ec_pkcs8, &self.rng).unwrap();
        k.sign(&self.rng, input.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec()
    }

    fn join(input: &str, sig: &[u8]) -> String {
        format!("{input}.{}", BASE64URL_NOPAD.encode(sig))
    }

    /// Signs with the RSA key (PKCS#1 v1.5, SHA-256) whatever the header says.
    fn rs256(&self, header: &str, claims: &str) -> String {
        let input = Self::input(header, claims);
        Self::join(&input, &self.rsa_sig(&signature::RSA_PKCS1_SHA256, &input))
    }

    fn es256(&self, header: &str, claims: &str) -> String {
        let input = Self::input(header, claims);
        Self::join(
            &input,
            &self.ec_sig(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &input),
        )
    }
}

fn rs_header() -> String {
    json!({"alg": "RS256", "kid": RSA_KID}).to_string()
}

fn claims(now: u64, edit: impl FnOnce(&mut Value)) -> String {
    let mut c = json!({
        "aud": ["nats"],
        "exp": now + 600,
        "iat": now,
        "nbf": now,
        "iss": K8S_ISS,
        "jti": "0b0e6e0c-0d7d-4d55-9a1c-5f0c7c9f6a11",
        "kubernetes.io": {
            "namespace": "shop",
            "pod": {"name": "orders-api-1", "uid": "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"},
            "serviceaccount": {"name": "orders-api", "uid": "6c0a5d1e-3f2b-4c8e-9a7d-1b2c3d4e5f60"}
        },
        "sub": "system:serviceaccount:shop:orders-api"
    });
    edit(&mut c);
    c.to_string()
}

const NOW: u64 = 1_800_000_000;

fn k8s_keys() -> HashMap<String, Arc<KeySet>> {
    keys(&[(K8S_ISS, "k8s-testkeys/jwks.json")])
}

fn outcome(token: &str, c: &TokenConfig, now: u64) -> Result<ValidatedToken, TokenError> {
    check_both(token, |t| validate(t, c, &k8s_keys(), now))
}

fn code(token: &str, now: u64) -> &'static str {
    match outcome(token, &cfg(&[K8S_ISS], "nats"), now) {
        Ok(_) => "accept",
        Err(e) => e.code(),
    }
}

#[test]
fn minted_time_boundaries() {
    let m = Minter::new();
    let h = rs_header();
    let at = |exp: u64| m.rs256(&h, &claims(NOW - 3600, |c| c["exp"] = json!(exp)));
    assert_eq!(code(&at(NOW), NOW), "accept", "exactly exp");
    assert_eq!(code(&at(NOW - 60), NOW), "accept", "exp + leeway");
    assert_eq!(code(&at(NOW - 61), NOW), "expired", "exp + leeway + 1");
    let mut strict = cfg(&[K8S_ISS], "nats");
    strict.leeway_secs = 0;
    assert!(outcome(&at(NOW), &strict, NOW).is_ok());
    assert_eq!(
        outcome(&at(NOW - 1), &strict, NOW).unwrap_err(),
        TokenError::Expired
    );
    let mut wide = cfg(&[K8S_ISS], "nats");
    wide.leeway_secs = 300;
    assert!(outcome(&at(NOW - 300), &wide, NOW).is_ok());
    assert_eq!(
        outcome(&at(NOW - 301), &wide, NOW).unwrap_err(),
        TokenError::Expired
    );

    let nbf = |nbf: u64| m.rs256(&h, &claims(NOW, |c| c["nbf"] = json!(nbf)));
    assert_eq!(code(&nbf(NOW + 60), NOW), "accept");
    assert_eq!(code(&nbf(NOW + 61), NOW), "not_yet_valid");
    let iat = |iat: u64| m.rs256(&h, &claims(NOW, |c| c["iat"] = json!(iat)));
    assert_eq!(code(&iat(NOW + 60), NOW), "accept");
    assert_eq!(code(&iat(NOW + 61), NOW), "issued_in_future");

    let no_exp = m.rs256(
        &h,
        &claims(NOW, |c| drop(c.as_object_mut().unwrap().remove("exp"))),
    );
    assert_eq!(code(&no_exp, NOW), "missing_exp");
    let no_nbf_iat = m.rs256(
        &h,
        &claims(NOW, |c| {
            let o = c.as_object_mut().unwrap();
            o.remove("nbf");
            o.remove("iat");
        }),
    );
    assert_eq!(code(&no_nbf_iat, NOW), "accept");
    let float_exp = m.rs256(&h, &claims(NOW, |c| c["exp"] = json!(NOW as f64 + 0.9)));
    assert_eq!(code(&float_exp, NOW), "accept");
    assert_eq!(code(&float_exp, NOW + 61), "expired");
    let string_exp = m.rs256(&h, &claims(NOW, |c| c["exp"] = json!("2100000000")));
    assert_eq!(code(&string_exp, NOW), "malformed");
}

#[test]
fn minted_shape_and_algorithm_attacks() {
    let m = Minter::new();
    let h = rs_header();
    let good = m.rs256(&h, &claims(NOW, |_| {}));
    assert_eq!(code(&good, NOW), "accept");
    let parts: Vec<&str> = good.split('.').collect();

    // Size: just under the limit is fine, one byte over is malformed before any decoding.
    let pad_to = |total: usize| {
        let mut filler = 0usize;
        loop {
            let t = m.rs256(&h, &claims(NOW, |c| c["x"] = json!("a".repeat(filler))));
            if t.len() >= total {
                return t;
            }
            filler += ((total - t.len()) * 3 / 4).max(1);
        }
    };
    let big = pad_to(16 * 1024);
    assert!(big.len() >= 16 * 1024 && big.len() < 16 * 1024 + 8);
    let expect = if big.len() == 16 * 1024 {
        "accept"
    } else {
        "malformed"
    };
    assert_eq!(code(&big, NOW), expect);
    assert_eq!(code(&pad_to(16 * 1024 + 1), NOW), "malformed");
    assert_eq!(code(&pad_to(15 * 1024), NOW), "accept");

    // Standard-alphabet base64 (with '/'), correctly signed over exactly those bytes.
    let std_payload =
        data_encoding::BASE64_NOPAD.encode(claims(NOW, |c| c["x"] = json!("??????")).as_bytes());
    assert!(std_payload.contains('/') || std_payload.contains('+'));
    let std_input = format!("{}.{std_payload}", parts[0]);
    let std_alphabet = Minter::join(
        &std_input,
        &m.rsa_sig(&signature::RSA_PKCS1_SHA256, &std_input),
    );
    let malformed = [
        format!("{}.{}", parts[0], parts[1]),
        format!("{good}.{}", parts[2]),
        format!("{}.{}.{}=", parts[0], parts[1], parts[2]),
        format!("{}.{}*.{}", parts[0], parts[1], parts[2]),
        std_alphabet.clone(),
        format!("{}..{}", parts[0], parts[2]),
        String::from("..."),
        String::new(),
        m.rs256(r#"["RS256"]"#, &claims(NOW, |_| {})),
        m.rs256(&h, "[1,2]"),
        m.rs256(&h, "\"claims\""),
        m.rs256(r#"{"alg":"RS256","alg":"RS256"}"#, &claims(NOW, |_| {})),
        m.rs256(&h, r#"{"iss":"a","iss":"b"}"#),
    ];
    for (i, t) in malformed.iter().enumerate() {
        assert_eq!(code(t, NOW), "malformed", "case {i}");
    }

    // Deeply nested JSON in an ignored claim is skipped without recursion (no stack
    // overflow); the token then fails on its missing claims.
    let deep = format!(
        r#"{{"iss":"{K8S_ISS}","x":{}{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    assert_eq!(code(&m.rs256(&h, &deep), NOW), "missing_exp");
    let deep_aud = format!(
        r#"{{"iss":"{K8S_ISS}","aud":{}{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    assert_eq!(code(&m.rs256(&h, &deep_aud), NOW), "malformed");

    // An empty signature is well-formed (alg none uses it) but verifies nothing.
    assert_eq!(
        code(&format!("{}.{}.", parts[0], parts[1]), NOW),
        "signature"
    );

    // alg none with a real signature over the same input.
    let none_input = Minter::input(r#"{"alg":"none"}"#, &claims(NOW, |_| {}));
    let none = Minter::join(
        &none_input,
        &m.rsa_sig(&signature::RSA_PKCS1_SHA256, &none_input),
    );
    assert_eq!(code(&none, NOW), "unsupported_alg");
    assert_eq!(code(&format!("{none_input}."), NOW), "unsupported_alg");
    // HS256 keyed with the public key bytes (algorithm confusion).
    let hs_input = Minter::input(
        &json!({"alg": "HS256", "kid": RSA_KID}).to_string(),
        &claims(NOW, |_| {}),
    );
    let pem = read("k8s-testkeys/rsa_public.pem");
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, pem.as_bytes()),
        hs_input.as_bytes(),
    );
    assert_eq!(
        code(&Minter::join(&hs_input, tag.as_ref()), NOW),
        "unsupported_alg"
    );
    for alg in ["PS256", "ES512", "EdDSA", "rs256", "HS512", ""] {
        let t = m.rs256(
            &json!({"alg": alg, "kid": RSA_KID}).to_string(),
            &claims(NOW, |_| {}),
        );
        assert_eq!(code(&t, NOW), "unsupported_alg", "{alg}");
    }
    let crit = m.rs256(
        &json!({"alg": "RS256", "kid": RSA_KID, "crit": ["exp"], "exp": 1}).to_string(),
        &claims(NOW, |_| {}),
    );
    assert_eq!(code(&crit, NOW), "unsupported_alg");
    let typ = m.rs256(
        &json!({"alg": "RS256", "kid": RSA_KID, "typ": "JWT"}).to_string(),
        &claims(NOW, |_| {}),
    );
    assert_eq!(
        code(&typ, NOW),
        "accept",
        "typ is neither required nor refused"
    );

    // kid naming the EC key on an RS256 token signed by the RSA key: no fallback.
    let mismatch = m.rs256(
        &json!({"alg": "RS256", "kid": EC_KID}).to_string(),
        &claims(NOW, |_| {}),
    );
    assert_eq!(code(&mismatch, NOW), "unknown_kid");
    // An empty kid counts as none (kube): every fitting key is tried.
    let empty_kid = m.rs256(
        &json!({"alg": "RS256", "kid": ""}).to_string(),
        &claims(NOW, |_| {}),
    );
    assert_eq!(code(&empty_kid, NOW), "accept");
    let unknown = m.rs256(
        &json!({"alg": "RS256", "kid": "nope"}).to_string(),
        &claims(NOW, |_| {}),
    );
    assert_eq!(code(&unknown, NOW), "unknown_kid");

    // ES256: raw r||s accepted, DER refused, swapped halves refused.
    let es_h = json!({"alg": "ES256", "kid": EC_KID}).to_string();
    let es = m.es256(&es_h, &claims(NOW, |_| {}));
    assert_eq!(code(&es, NOW), "accept");
    let es_input = Minter::input(&es_h, &claims(NOW, |_| {}));
    let der = m.ec_sig(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &es_input);
    assert_eq!(code(&Minter::join(&es_input, &der), NOW), "signature");
    let raw = BASE64URL_NOPAD
        .decode(es.rsplit('.').next().unwrap().as_bytes())
        .unwrap();
    let swapped = [&raw[32..], &raw[..32]].concat();
    assert_eq!(code(&Minter::join(&es_input, &swapped), NOW), "signature");
    // ES256 header on an RSA signature and vice versa.
    let es_with_rsa = m.rs256(&es_h, &claims(NOW, |_| {}));
    assert_eq!(code(&es_with_rsa, NOW), "signature");

    // RS384/RS512: the published JWK says alg RS256, so the key may not verify them...
    let rs512_h = json!({"alg": "RS512", "kid": RSA_KID}).to_string();
    let rs512_input = Minter::input(&rs512_h, &claims(NOW, |_| {}));
    let rs512 = Minter::join(
        &rs512_input,
        &m.rsa_sig(&signature::RSA_PKCS1_SHA512, &rs512_input),
    );
    assert_eq!(code(&rs512, NOW), "unknown_kid");
    // ...but a JWK without alg may.
    let mut jwks: Value = serde_json::from_str(&read("k8s-testkeys/jwks.json")).unwrap();
    for k in jwks["keys"].as_array_mut().unwrap() {
        k.as_object_mut().unwrap().remove("alg");
    }
    let (set, _) = KeySet::from_jwks_json(jwks.to_string().as_bytes()).unwrap();
    let no_alg: HashMap<String, Arc<KeySet>> = [(K8S_ISS.to_string(), Arc::new(set))].into();
    let c = cfg(&[K8S_ISS], "nats");
    assert!(validate(&rs512, &c, &no_alg, NOW).is_ok());
    // A signature by SHA-256 under an RS512 header does not verify.
    let rs512_wrong = Minter::join(
        &rs512_input,
        &m.rsa_sig(&signature::RSA_PKCS1_SHA256, &rs512_input),
    );
    assert_eq!(
        validate(&rs512_wrong, &c, &no_alg, NOW).unwrap_err(),
        TokenError::Signature
    );
}

type Edit = Box<dyn Fn(&mut Value)>;

#[test]
fn minted_claim_rules() {
    let m = Minter::new();
    let h = rs_header();
    let t = |edit: &dyn Fn(&mut Value)| m.rs256(&h, &claims(NOW, edit));
    let cases: Vec<(&str, Edit)> = vec![
        ("accept", Box::new(|c| c["aud"] = json!("nats"))),
        ("accept", Box::new(|c| c["aud"] = json!(["a", "nats", "b"]))),
        ("audience", Box::new(|c| c["aud"] = json!([]))),
        ("audience", Box::new(|c| c["aud"] = json!(["NATS"]))),
        (
            "audience",
            Box::new(|c| drop(c.as_object_mut().unwrap().remove("aud"))),
        ),
        ("malformed", Box::new(|c| c["aud"] = json!({"nats": 1}))),
        (
            "issuer",
            Box::new(|c| c["iss"] = json!(format!("{K8S_ISS}/"))),
        ),
        (
            "issuer",
            Box::new(|c| drop(c.as_object_mut().unwrap().remove("iss"))),
        ),
        (
            "claims",
            Box::new(|c| c["sub"] = json!("system:serviceaccount:shop:other")),
        ),
        (
            "claims",
            Box::new(|c| drop(c.as_object_mut().unwrap().remove("sub"))),
        ),
        (
            "claims",
            Box::new(|c| c["kubernetes.io"]["namespace"] = json!("Shop")),
        ),
        (
            "claims",
            Box::new(|c| c["kubernetes.io"]["namespace"] = json!("")),
        ),
        (
            "claims",
            Box::new(|c| c["kubernetes.io"]["namespace"] = json!("a".repeat(64))),
        ),
        (
            "claims",
            Box::new(|c| c["kubernetes.io"]["serviceaccount"]["uid"] = json!("")),
        ),
        (
            "claims",
            Box::new(|c| c["kubernetes.io"]["serviceaccount"]["name"] = json!("a:b")),
        ),
        (
            "claims",
            Box::new(|c| {
                drop(
                    c["kubernetes.io"]
                        .as_object_mut()
                        .unwrap()
                        .remove("serviceaccount"),
                )
            }),
        ),
        (
            "claims",
            Box::new(|c| c["kubernetes.io"]["secret"] = json!({"name": "s", "uid": "u"})),
        ),
        (
            "claims",
            Box::new(|c| c["kubernetes.io"]["pod"] = json!({"name": "", "uid": "u"})),
        ),
        (
            "claims",
            Box::new(|c| drop(c.as_object_mut().unwrap().remove("kubernetes.io"))),
        ),
        (
            "accept",
            Box::new(|c| c["kubernetes.io"]["future"] = json!({"x": [1, 2]})),
        ),
        (
            "accept",
            Box::new(|c| c["kubernetes.io"]["warnafter"] = json!(1)),
        ),
        (
            "accept",
            Box::new(|c| {
                c["kubernetes.io"]["serviceaccount"]["name"] = json!("a.b-c");
                c["sub"] = json!("system:serviceaccount:shop:a.b-c");
            }),
        ),
    ];
    for (i, (want, edit)) in cases.iter().enumerate() {
        assert_eq!(code(&t(edit.as_ref()), NOW), *want, "case {i}");
    }
}

// ---------------------------------------------------------------------------------------------
// Seeded mutation fuzzing: no panic, and no mutated token is ever accepted.

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn random_json(r: &mut XorShift, depth: u32) -> Value {
    let keys = [
        "alg",
        "kid",
        "iss",
        "aud",
        "exp",
        "nbf",
        "iat",
        "sub",
        "kubernetes.io",
        "crit",
        "x",
    ];
    match r.below(if depth > 2 { 5 } else { 8 }) {
        0 => Value::Null,
        1 => json!(r.next() % 3 == 0),
        2 => json!(r.next() as i64),
        3 => json!(["RS256", "ES256", "none", "HS256", K8S_ISS, RSA_KID, "nats"][r.below(7)]),
        4 => json!((r.next() % 1000) as f64 / 7.0),
        5 | 6 => {
            let mut o = serde_json::Map::new();
            for _ in 0..r.below(6) {
                o.insert(keys[r.below(keys.len())].into(), random_json(r, depth + 1));
            }
            Value::Object(o)
        }
        _ => Value::Array((0..r.below(4)).map(|_| random_json(r, depth + 1)).collect()),
    }
}

#[test]
fn fuzz_parser_and_verifier_with_mutations() {
    let iterations = if cfg!(debug_assertions) {
        20_000
    } else {
        300_000
    };
    let m = Minter::new();
    let map = k8s_keys();
    let c = cfg(&[K8S_ISS], "nats");
    let now = K8S_NOW;
    let originals = vec![
        read("k8s-testkeys/valid_rs256_pod.jwt"),
        read("k8s-testkeys/valid_es256_pod.jwt"),
        read("k8s-testkeys/valid_rs256_no_kid.jwt"),
        m.rs256(&rs_header(), &claims(now, |_| {})),
        m.es256(
            &json!({"alg": "ES256", "kid": EC_KID}).to_string(),
            &claims(now, |_| {}),
        ),
    ];
    for o in &originals {
        assert!(validate(o, &c, &map, now).is_ok());
    }
    let b64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ \n{}";
    let mut r = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut counts = [0usize; 6];
    let mut seen: HashMap<&'static str, usize> = HashMap::new();
    for _ in 0..iterations {
        let oi = r.below(originals.len());
        let orig = originals[oi].as_bytes();
        let kind = r.below(6);
        counts[kind] += 1;
        let mutated: Vec<u8> = match kind {
            0 => {
                let mut v = orig.to_vec();
                for _ in 0..1 + r.below(3) {
                    let i = r.below(v.len());
                    v[i] ^= 1 << r.below(8);
                }
                v
            }
            1 => orig[..r.below(orig.len())].to_vec(),
            2 => {
                // Splice the three parts of different tokens.
                let pick = |r: &mut XorShift, k: usize| {
                    originals[r.below(originals.len())]
                        .split('.')
                        .nth(k)
                        .unwrap()
                        .to_string()
                };
                format!(
                    "{}.{}.{}",
                    pick(&mut r, 0),
                    pick(&mut r, 1),
                    pick(&mut r, 2)
                )
                .into_bytes()
            }
            3 => {
                let mut v = orig.to_vec();
                let i = r.below(v.len() + 1);
                if r.next() % 2 == 0 && i < v.len() {
                    v.remove(i);
                } else {
                    v.insert(i, b64[r.below(b64.len())]);
                }
                v
            }
            4 => {
                // Random JSON header/payload with a real signature part.
                let h = random_json(&mut r, 0).to_string();
                let p = random_json(&mut r, 0).to_string();
                let sig = orig.rsplit(|&b| b == b'.').next().unwrap();
                format!(
                    "{}.{}.{}",
                    BASE64URL_NOPAD.encode(h.as_bytes()),
                    BASE64URL_NOPAD.encode(p.as_bytes()),
                    String::from_utf8_lossy(sig)
                )
                .into_bytes()
            }
            _ => {
                // A byte of the signed input replaced by another base64url character.
                let dots: Vec<usize> = orig
                    .iter()
                    .enumerate()
                    .filter(|(_, &b)| b == b'.')
                    .map(|(i, _)| i)
                    .collect();
                let mut v = orig.to_vec();
                let i = r.below(dots[1]);
                if v[i] != b'.' {
                    v[i] = b64[r.below(64)];
                }
                v
            }
        };
        let Ok(s) = std::str::from_utf8(&mutated) else {
            continue;
        };
        let result = validate(s, &c, &map, now);
        let same = originals
            .iter()
            .any(|o| o.as_str() == s.trim_matches(|c: char| c.is_ascii_whitespace()));
        if let Err(e) = &result {
            *seen.entry(e.code()).or_insert(0usize) += 1;
        }
        if !same {
            assert!(
                result.is_err(),
                "mutation kind {kind} of token {oi} was accepted: {s}"
            );
        }
    }
    assert!(counts.iter().all(|&n| n > iterations / 10), "{counts:?}");
    // The mutations reach every stage, not only the parser.
    for stage in ["malformed", "unsupported_alg", "issuer", "signature"] {
        assert!(seen.get(stage).copied().unwrap_or(0) > 0, "{seen:?}");
    }
}
