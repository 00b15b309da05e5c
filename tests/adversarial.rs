//! Adversarial tests of the decision path (security review): each test either reproduces a
//! weakness that was fixed or pins behaviour an attacker would like to break.
//!
//! Vectors are found at `$NATS_K8S_VECTORS_DIR`, else `<CARGO_MANIFEST_DIR>/../shared/vectors`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use data_encoding::{BASE64, BASE64URL_NOPAD};
use nats_k8s_callout::authz::Decision;
use nats_k8s_callout::authz::{AuthRequest, Decider, Grant};
use nats_k8s_callout::callout::process::Outcome;
use nats_k8s_callout::callout::{CalloutConfig, Placement, Processor};
use nats_k8s_callout::clock::FixedClock;
use nats_k8s_callout::decision::{DecisionSettings, K8sDecider};
use nats_k8s_callout::httpclient::HttpSettings;
use nats_k8s_callout::jwks::default_http;
use nats_k8s_callout::jwks::{IssuerSource, KeySource, KeyStore, StoreConfig};
use nats_k8s_callout::kube::{ResourceVersion, SaCache, SaRecord, Uid};
use nats_k8s_callout::logging::{self, MemorySink};
use nats_k8s_callout::logging::{Filter, Format, Logger};
use nats_k8s_callout::natsjwt::{
    self, AuthorizationRequest, AuthorizationResponse, Claims, User, REQUEST_AUDIENCE,
};
use nats_k8s_callout::policy::private_inbox_prefix;
use nats_k8s_callout::policy::{evaluate, PolicySettings, Verdict};
use nats_k8s_callout::secret::Secret;
use nats_k8s_callout::subject;
use nats_k8s_callout::testkit::vectors::{self, read};
use nats_k8s_callout::token::validate::validate;
use nats_k8s_callout::token::{KeySet, TokenConfig, TokenError, ValidatedToken, Validator};
use nkeys::{KeyPair, XKey};
use ring::signature::{self, RsaKeyPair};
use serde_json::{json, Value};

/// The global logger (JSON into memory), installed once for this test binary.
fn global_sink() -> &'static MemorySink {
    static SINK: OnceLock<MemorySink> = OnceLock::new();
    SINK.get_or_init(|| {
        let sink = MemorySink::new();
        logging::init_with_sink("debug", "json", Box::new(sink.clone())).expect("init logger");
        sink
    })
}

/// Tests that read the global sink run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// A comma-separated annotation value of about `bytes` bytes made of distinct entries.
fn many_entries(bytes: usize, f: impl Fn(u64) -> String) -> (String, u64) {
    let mut s = String::with_capacity(bytes + 32);
    let mut n = 0;
    while s.len() < bytes {
        s.push_str(&f(n));
        s.push(',');
        n += 1;
    }
    (s, n)
}

// ---------------------------------------------------------------------------------------------
// Policy: annotations

/// Kubernetes allows 256 KiB of annotations per object. Whoever may annotate a ServiceAccount
/// must not be able to make every connection of it cost seconds of CPU on the shared decision
/// workers (the policy runs on every connect). Was quadratic in the number of entries.
#[test]
fn a_maximal_annotation_is_evaluated_promptly() {
    let (value, n) = many_entries(250 * 1024, |i| format!("t{i}"));
    assert!(n > 30_000, "{n}");
    let started = Instant::now();
    let o = evaluate(
        &PolicySettings::default(),
        "shop",
        "api",
        Some(&value),
        Some(&value),
    )
    .unwrap();
    let took = started.elapsed();
    assert_eq!(o.permissions.publish.allow.len() as u64, n + 1);
    assert_eq!(o.permissions.subscribe.allow.len() as u64, n + 2);
    assert!(o.entries.iter().all(|e| e.verdict == Verdict::Kept));
    // Liveness bound, generous for a debug build on a busy machine (it took > 40 s before).
    assert!(took < Duration::from_secs(5), "evaluate took {took:?}");
}

/// Entries that repeat a default grant or an earlier entry are granted once, also in bulk.
#[test]
fn repeated_entries_are_granted_once() {
    let value = "shop.>,a.b,a.b,shop.>,c.>,a.b,".repeat(3);
    let o = evaluate(
        &PolicySettings::default(),
        "shop",
        "api",
        Some(&value),
        None,
    )
    .unwrap();
    assert_eq!(o.permissions.publish.allow, vec!["shop.>", "a.b", "c.>"]);
}

/// One connection of a ServiceAccount whose annotation holds thousands of invalid entries
/// must not write thousands of log lines (log flooding by whoever may annotate it); every
/// dropped entry is still counted.
#[test]
fn dropped_entries_do_not_flood_the_log() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let sink = global_sink();
    let (value, n) = many_entries(64 * 1024, |i| format!("bad..{i}"));
    let o = evaluate(
        &PolicySettings::default(),
        "flood",
        "writer",
        Some(&value),
        None,
    )
    .unwrap();
    assert_eq!(o.dropped().count() as u64, n);
    let counter = nats_k8s_callout::metrics::global().counter(
        "nats_k8s_callout_annotation_entries_dropped_total",
        "ServiceAccount annotation entries dropped, by reason.",
        &[("reason", "invalid_subject")],
    );
    let before = counter.get();
    sink.clear();
    o.report("flood", "writer");
    let out = sink.contents();
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("\"namespace\":\"flood\""))
        .collect();
    assert!(!lines.is_empty(), "nothing logged: {out}");
    assert!(
        lines.len() <= 32,
        "{} log lines for one connection",
        lines.len()
    );
    // The lines that are written say how many were left out.
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("\"dropped\":{n}"))),
        "no summary with the total: {lines:?}"
    );
    assert!(counter.get() >= before + n, "every drop is still counted");
}

// ---------------------------------------------------------------------------------------------
// Token validation and the decision: tokens minted at test time with the Kubernetes test keys.

const K8S_ISS: &str = "https://kubernetes.default.svc.cluster.local";
const RSA_KID: &str = "JHJehTTTZlsspKHT-GaJxK7Kd1NQgZJu3fyK6K_QDYU";
const RSA_N: &str = "249XwEo9k4tM8fMxV7zxOhcrP-WvXn917koM5Qr2ZXs4vo26e4ytdlrV0bQ9SlcLpQVSYjIxNfhTZdDt-ecIzshKuv1gKIxbbLQMOuK1eA_4HALyEkFgmS_tleLJrhc65tKPMGD-pKQ_xhmzRuCG51RoiMgbQxaCyYxGfNLpLAZK9L0Tctv9a0mJmGIYnIOQM4kC1A1I1n3EsXMWmeJUj7OTh_AjjCnMnkgvKT2tpKxYQ59PgDgU8Ssc7RDSmSkLxnrv-OrN80j6xrw0OjEiB4Ycr0PqfzZcvy8efTtFQ_Jnc4Bp1zUtFXt7-QeevePtQ2EcyELXE0i63T1CujRMWw";
const EC_KID: &str = "SoABiieYuNx4UdqYvZRVeuC6SihxgLrhLy9peHMHpTc";
const EC_X: &str = "H6cuzP8XuD5wal6wf9M6xDljTOPLX2i8uIp_C_ASqiI";
const EC_Y: &str = "BlHnikLV9PyEd6gl8k4T_3Wwoh6xd79XLoQTh2PAi1Y";
const SA_UID: &str = "6c0a5d1e-3f2b-4c8e-9a7d-1b2c3d4e5f60";
const NOW: u64 = 1_800_000_000;

fn rsa_key() -> &'static RsaKeyPair {
    static KEY: OnceLock<RsaKeyPair> = OnceLock::new();
    KEY.get_or_init(|| {
        let pem = read("k8s-testkeys/rsa_private.pem");
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        RsaKeyPair::from_der(&BASE64.decode(b64.as_bytes()).unwrap()).unwrap()
    })
}

fn b64(bytes: &[u8]) -> String {
    BASE64URL_NOPAD.encode(bytes)
}

/// `header.payload` of raw JSON texts (so duplicate keys and odd numbers survive).
fn input(header: &str, payload: &str) -> String {
    format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()))
}

/// RS256 over raw header and payload texts with the test key.
fn rs256_raw(header: &str, payload: &str) -> String {
    let input = input(header, payload);
    let key = rsa_key();
    let mut sig = vec![0u8; key.public().modulus_len()];
    key.sign(
        &signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .unwrap();
    format!("{input}.{}", b64(&sig))
}

fn rs_header() -> String {
    json!({"alg": "RS256", "kid": RSA_KID}).to_string()
}

fn claims(edit: impl FnOnce(&mut Value)) -> Value {
    let mut c = json!({
        "aud": ["nats"],
        "exp": NOW + 600,
        "iat": NOW,
        "nbf": NOW,
        "iss": K8S_ISS,
        "kubernetes.io": {
            "namespace": "shop",
            "pod": {"name": "orders-api-1", "uid": "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"},
            "serviceaccount": {"name": "orders-api", "uid": SA_UID}
        },
        "sub": "system:serviceaccount:shop:orders-api"
    });
    edit(&mut c);
    c
}

fn token(edit: impl FnOnce(&mut Value)) -> String {
    rs256_raw(&rs_header(), &claims(edit).to_string())
}

fn cfg() -> TokenConfig {
    TokenConfig::new(vec![K8S_ISS.into()], vec!["nats".into()])
}

fn keys_from(jwks: &str) -> HashMap<String, Arc<KeySet>> {
    let (set, _) = KeySet::from_jwks_json(jwks.as_bytes()).unwrap();
    HashMap::from([(K8S_ISS.to_string(), Arc::new(set))])
}

fn k8s_keys() -> HashMap<String, Arc<KeySet>> {
    keys_from(&read("k8s-testkeys/jwks.json"))
}

fn check(token: &str) -> Result<ValidatedToken, TokenError> {
    validate(token, &cfg(), &k8s_keys(), NOW)
}

fn code(token: &str) -> &'static str {
    match check(token) {
        Ok(_) => "accept",
        Err(e) => e.code(),
    }
}

#[test]
fn minted_baseline_is_accepted() {
    let v = check(&token(|_| {})).unwrap();
    assert_eq!((v.namespace.as_str(), v.sa_uid.as_str()), ("shop", SA_UID));
}

/// A JSON parser that let the last (or first) of two equal keys win would let a token say two
/// things at once; every duplicate, at any depth we read, is malformed.
#[test]
fn duplicate_keys_anywhere_we_read_are_malformed() {
    let base = claims(|_| {}).to_string();
    let dup = |from: &str, to: &str| {
        assert!(base.contains(from), "{from}");
        rs256_raw(&rs_header(), &base.replacen(from, to, 1))
    };
    let cases = [
        dup(
            "\"namespace\":\"shop\"",
            "\"namespace\":\"shop\",\"namespace\":\"bank\"",
        ),
        dup(
            "\"namespace\":\"shop\"",
            "\"namespace\":\"bank\",\"namespace\":\"shop\"",
        ),
        dup(
            &format!("\"uid\":\"{SA_UID}\""),
            &format!("\"uid\":\"{SA_UID}\",\"uid\":\"other\""),
        ),
        dup(
            "\"name\":\"orders-api\"",
            "\"name\":\"orders-api\",\"name\":\"admin\"",
        ),
        dup(
            "\"aud\":[\"nats\"]",
            "\"aud\":[\"nats\"],\"aud\":[\"other\"]",
        ),
        dup("\"sub\":", "\"sub\":\"x\",\"sub\":"),
        dup(
            "\"kubernetes.io\":",
            "\"kubernetes.io\":{\"namespace\":\"bank\"},\"kubernetes.io\":",
        ),
    ];
    for t in &cases {
        assert_eq!(code(t), "malformed");
    }
    // In the header too: a second kid or alg.
    let h = format!("{{\"alg\":\"RS256\",\"kid\":\"{RSA_KID}\",\"kid\":\"other\"}}");
    assert_eq!(code(&rs256_raw(&h, &base)), "malformed");
}

/// `aud` is a string or an array of strings, nothing else; `exp`/`nbf`/`iat` are numbers.
#[test]
fn odd_claim_types_are_refused() {
    for aud in [
        json!([["nats"]]),
        json!({"nats": true}),
        json!(["x", ["nats"]]),
        json!(["x", {"aud": "nats"}]),
        json!(["nats", null]),
        json!(true),
    ] {
        assert_eq!(
            code(&token(|c| c["aud"] = aud.clone())),
            "malformed",
            "{aud}"
        );
    }
    for aud in [
        json!([]),
        json!(""),
        json!("NATS"),
        json!("nats "),
        json!(["nat"]),
    ] {
        assert_eq!(
            code(&token(|c| c["aud"] = aud.clone())),
            "audience",
            "{aud}"
        );
    }
    for exp in [
        json!("1900000000"),
        json!([1]),
        json!({"n": 1}),
        json!(true),
    ] {
        assert_eq!(
            code(&token(|c| c["exp"] = exp.clone())),
            "malformed",
            "{exp}"
        );
    }
    // Numbers out of f64 range do not parse at all.
    let base = claims(|_| {}).to_string();
    let huge = base.replacen(&format!("\"exp\":{}", NOW + 600), "\"exp\":1e400", 1);
    assert_ne!(huge, base);
    assert_eq!(code(&rs256_raw(&rs_header(), &huge)), "malformed");
}

/// Negative, fractional and enormous NumericDates: never wrap around into "valid".
#[test]
fn numeric_date_edges() {
    let with = |k: &'static str, v: Value| code(&token(|c| c[k] = v));
    assert_eq!(with("exp", json!(-1)), "expired");
    assert_eq!(with("exp", json!(i64::MIN)), "expired");
    assert_eq!(with("exp", json!(-1e300)), "expired");
    assert_eq!(with("exp", json!(0)), "expired");
    assert_eq!(with("exp", json!(null)), "missing_exp");
    assert_eq!(with("exp", json!((NOW - 61) as f64 + 0.999)), "expired");
    assert_eq!(with("exp", json!(u64::MAX)), "accept");
    assert_eq!(with("exp", json!(1e300)), "accept");
    assert_eq!(with("nbf", json!(u64::MAX)), "not_yet_valid");
    assert_eq!(with("nbf", json!(1e300)), "not_yet_valid");
    assert_eq!(with("iat", json!(1e300)), "issued_in_future");
    assert_eq!(with("nbf", json!(-5)), "accept");
    // An integer literal beyond u64 parses as a float and saturates, it does not wrap to 0.
    let base = claims(|_| {}).to_string();
    let t = base.replacen(
        &format!("\"nbf\":{NOW}"),
        "\"nbf\":18446744073709551616000",
        1,
    );
    assert_eq!(code(&rs256_raw(&rs_header(), &t)), "not_yet_valid");
}

/// Names that would become NATS subject syntax (`.`, `*`, `>`, spaces) or look-alikes never
/// get through: the namespace is a DNS label, the name a DNS subdomain, `sub` matches exactly.
#[test]
fn identities_that_would_become_subject_syntax_are_refused() {
    let with_ns = |ns: &str| {
        let ns = ns.to_string();
        token(move |c| {
            c["kubernetes.io"]["namespace"] = json!(ns);
            c["sub"] = json!(format!("system:serviceaccount:{ns}:orders-api"));
        })
    };
    for ns in [
        "sho.p",
        "shop.>",
        "*",
        ">",
        "sh op",
        "shop\u{0}",
        "shop\n",
        "Shop",
        "$SYS",
        "_INBOX",
        "sh\u{43e}p",
        "ｓhop",
        "shop\u{200b}",
        "",
        "-shop",
        &"a".repeat(64),
    ] {
        assert_eq!(code(&with_ns(ns)), "claims", "{ns:?}");
    }
    let with_sa = |sa: &str| {
        let sa = sa.to_string();
        token(move |c| {
            c["kubernetes.io"]["serviceaccount"]["name"] = json!(sa);
            c["sub"] = json!(format!("system:serviceaccount:shop:{sa}"));
        })
    };
    for sa in [
        "a*", "a.>", ">", "a b", "a..b", ".a", "a_b", "A", "a:b", "a\tb",
    ] {
        assert_eq!(code(&with_sa(sa)), "claims", "{sa:?}");
    }
    assert_eq!(code(&with_sa("orders.api.v2")), "accept");
    // `sub` must name exactly the same identity (no confusables, no extra bytes).
    for sub in [
        "system:serviceaccount:shop:orders\u{2010}api",
        "system:serviceaccount:shop:orders-api ",
        "system:serviceaccount:shop:orders-api\n",
        "system:serviceaccount:shop:orders-api:x",
        "system:serviceaccount:bank:orders-api",
        "System:serviceaccount:shop:orders-api",
    ] {
        assert_eq!(code(&token(|c| c["sub"] = json!(sub))), "claims", "{sub:?}");
    }
}

/// With `e = 1` the "signature" is the padded digest itself: a verifier that accepted such a
/// key would accept forgeries by anyone. ring refuses exponents below 3 at verification.
#[test]
fn rsa_public_exponent_one_cannot_verify_a_forgery() {
    let jwks = format!(r#"{{"keys":[{{"kty":"RSA","kid":"e1","n":"{RSA_N}","e":"AQ"}}]}}"#);
    let header = json!({"alg": "RS256", "kid": "e1"}).to_string();
    let inp = input(&header, &claims(|_| {}).to_string());
    // EMSA-PKCS1-v1_5 encoding of SHA-256(input), the modulus length (256 bytes) long.
    let digest = ring::digest::digest(&ring::digest::SHA256, inp.as_bytes());
    let prefix: [u8; 19] = [
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    let mut em = vec![0x00, 0x01];
    em.resize(256 - 19 - 32 - 1, 0xff);
    em.push(0x00);
    em.extend_from_slice(&prefix);
    em.extend_from_slice(digest.as_ref());
    assert_eq!(em.len(), 256);
    let forged = format!("{inp}.{}", b64(&em));
    assert_eq!(
        validate(&forged, &cfg(), &keys_from(&jwks), NOW).unwrap_err(),
        TokenError::Signature
    );
    // The same key with e = 65537 is the real one: a real signature under that kid verifies.
    let real_jwks = jwks.replace("\"AQ\"", "\"AQAB\"");
    let good = rs256_raw(&header, &claims(|_| {}).to_string());
    assert!(validate(&good, &cfg(), &keys_from(&real_jwks), NOW).is_ok());
}

/// ECDSA: r or s of zero or at least the group order, and keys that are not curve points.
#[test]
fn ecdsa_degenerate_signatures_and_points() {
    let jwks = read("k8s-testkeys/jwks.json");
    let header = json!({"alg": "ES256", "kid": EC_KID}).to_string();
    let inp = input(&header, &claims(|_| {}).to_string());
    // P-256 group order n.
    let n = hex32("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
    let one = {
        let mut v = [0u8; 32];
        v[31] = 1;
        v
    };
    for (r, s) in [
        ([0u8; 32], one),
        (one, [0u8; 32]),
        ([0u8; 32], [0u8; 32]),
        (n, one),
        (one, n),
        ([0xff; 32], one),
    ] {
        let t = format!("{inp}.{}", b64(&[r, s].concat()));
        assert_eq!(
            validate(&t, &cfg(), &keys_from(&jwks), NOW).unwrap_err(),
            TokenError::Signature
        );
    }
    // Not a point on the curve, or coordinates outside the field: skipped at load.
    let zero = b64(&[0u8; 32]);
    let big = b64(&[0xffu8; 32]);
    let mut long_x = vec![0u8];
    long_x.extend_from_slice(&BASE64URL_NOPAD.decode(EC_X.as_bytes()).unwrap());
    let long_x = b64(&long_x);
    for (x, y) in [
        (zero.as_str(), zero.as_str()),
        (EC_X, zero.as_str()),
        (big.as_str(), EC_Y),
        (EC_X, big.as_str()),
        (long_x.as_str(), EC_Y),
    ] {
        let doc =
            format!(r#"{{"keys":[{{"kty":"EC","kid":"k","crv":"P-256","x":"{x}","y":"{y}"}}]}}"#);
        let (set, skipped) = KeySet::from_jwks_json(doc.as_bytes()).unwrap();
        assert!(set.is_empty() && skipped.len() == 1, "{x} {y}");
    }
    // Padding or non-canonical trailing bits in key material: skipped too.
    let padded = format!("{RSA_N}==");
    let doc = format!(r#"{{"keys":[{{"kty":"RSA","kid":"k","n":"{padded}","e":"AQAB"}}]}}"#);
    assert!(KeySet::from_jwks_json(doc.as_bytes()).unwrap().0.is_empty());
    let doc = format!(r#"{{"keys":[{{"kty":"RSA","kid":"k","n":"{RSA_N}","e":"AQAC"}}]}}"#);
    assert!(
        KeySet::from_jwks_json(doc.as_bytes()).unwrap().0.is_empty(),
        "even exponent"
    );
}

fn hex32(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

/// Key ids: a JWKS holding the same kid twice tries both keys; a kid of another key type is
/// no fallback; a JWK `alg` pins the token `alg`.
#[test]
fn kid_games() {
    let other = read("k8s-testkeys/jwks-only-other.json");
    let other_key: Value = serde_json::from_str::<Value>(&other).unwrap()["keys"][0].clone();
    let mut impostor = other_key.clone();
    impostor["kid"] = json!(RSA_KID);
    let real: Value = serde_json::from_str::<Value>(&read("k8s-testkeys/jwks.json")).unwrap();
    let real_rsa = real["keys"][0].clone();
    let ec = real["keys"][1].clone();
    let good = token(|_| {});
    // Duplicate kid, the wrong key first: the right one is still found; neither alone forges.
    let both = json!({"keys": [impostor, real_rsa]}).to_string();
    assert!(validate(&good, &cfg(), &keys_from(&both), NOW).is_ok());
    let only_impostor = json!({"keys": [impostor]}).to_string();
    assert_eq!(
        validate(&good, &cfg(), &keys_from(&only_impostor), NOW).unwrap_err(),
        TokenError::Signature
    );
    // The RSA kid re-used by the EC key only: a type mismatch, not a fallback to other keys.
    let mut ec_named_rsa = ec.clone();
    ec_named_rsa["kid"] = json!(RSA_KID);
    let mut rsa_unnamed = real["keys"][0].clone();
    rsa_unnamed.as_object_mut().unwrap().remove("kid");
    let doc = json!({"keys": [ec_named_rsa, rsa_unnamed]}).to_string();
    assert_eq!(
        validate(&good, &cfg(), &keys_from(&doc), NOW).unwrap_err(),
        TokenError::UnknownKid
    );
    // No kid at all: every key of the right type is tried, the EC one never for RS256.
    let no_kid = rs256_raw(r#"{"alg":"RS256"}"#, &claims(|_| {}).to_string());
    assert_eq!(code(&no_kid), "accept");
    let kid_empty = rs256_raw(r#"{"alg":"RS256","kid":""}"#, &claims(|_| {}).to_string());
    assert_eq!(code(&kid_empty), "accept");
    // JWK alg RS256 refuses an RS512 header, even over a genuine RS512 signature.
    let h512 = json!({"alg": "RS512", "kid": RSA_KID}).to_string();
    let inp = input(&h512, &claims(|_| {}).to_string());
    let key = rsa_key();
    let mut sig = vec![0u8; key.public().modulus_len()];
    key.sign(
        &signature::RSA_PKCS1_SHA512,
        &ring::rand::SystemRandom::new(),
        inp.as_bytes(),
        &mut sig,
    )
    .unwrap();
    assert_eq!(code(&format!("{inp}.{}", b64(&sig))), "unknown_kid");
    // A non-string kid, or a kid with control characters that is not in the set.
    assert_eq!(
        code(&rs256_raw(
            r#"{"alg":"RS256","kid":1}"#,
            &claims(|_| {}).to_string()
        )),
        "malformed"
    );
    assert_eq!(
        code(&rs256_raw(
            r#"{"alg":"RS256","kid":"x\n\"level\":\"ERROR\""}"#,
            &claims(|_| {}).to_string()
        )),
        "unknown_kid"
    );
}

// ---------------------------------------------------------------------------------------------
// The decision: ServiceAccount, UID, session end.

fn decider(records: Vec<(&str, &str, SaRecord)>, now: u64) -> K8sDecider {
    let store = KeyStore::new(
        vec![IssuerSource {
            issuer: K8S_ISS.into(),
            source: KeySource::File(vectors::dir().join("k8s-testkeys/jwks.json")),
        }],
        StoreConfig::default(),
    )
    .unwrap();
    store.refresh(K8S_ISS).unwrap();
    let validator = Validator::new(cfg(), store).unwrap();
    let cache = SaCache::from_records(
        records
            .into_iter()
            .map(|(ns, n, r)| (ns.to_string(), n.to_string(), r)),
    );
    K8sDecider::new(
        validator,
        cache,
        DecisionSettings {
            policy: PolicySettings::default(),
            max_session: Duration::from_secs(3600),
        },
        Arc::new(FixedClock::new(now)),
    )
}

fn record(uid: &str, deleting: bool) -> SaRecord {
    SaRecord {
        uid: Uid::new(uid),
        annotations: Box::default(),
        deleting,
        resource_version: ResourceVersion::new("1"),
    }
}

fn decide(d: &K8sDecider, t: &str) -> Result<Option<u64>, &'static str> {
    match d.evaluate_token(t).decision {
        Decision::Allow(g) => Ok(g.expires_at),
        Decision::Deny(x) => Err(x.code),
    }
}

#[test]
fn sessions_never_outlive_the_token() {
    let d = decider(vec![("shop", "orders-api", record(SA_UID, false))], NOW);
    let with_exp = |exp: Value| token(|c| c["exp"] = exp);
    // Inside the validator's leeway but already past: the token is valid, a session is not.
    assert_eq!(
        decide(&d, &with_exp(json!(NOW - 30))),
        Err("session_expired")
    );
    assert_eq!(
        decide(&d, &with_exp(json!(NOW - 60))),
        Err("session_expired")
    );
    assert_eq!(decide(&d, &with_exp(json!(NOW - 61))), Err("expired"));
    assert_eq!(decide(&d, &with_exp(json!(NOW))), Err("session_expired"));
    assert_eq!(decide(&d, &with_exp(json!(NOW + 1))), Ok(Some(NOW + 1)));
    assert_eq!(decide(&d, &with_exp(json!(NOW + 600))), Ok(Some(NOW + 600)));
    // Far-future expiry (no overflow): capped at the maximum session.
    for exp in [json!(u64::MAX), json!(1e300), json!(NOW + 10 * 3600)] {
        assert_eq!(decide(&d, &with_exp(exp)), Ok(Some(NOW + 3600)));
    }
    // Never a grant without an expiry.
    assert!(decide(&d, &with_exp(json!(NOW + 5))).unwrap().is_some());
}

#[test]
fn the_service_account_must_exist_with_the_token_uid() {
    let t = token(|_| {});
    let d = decider(
        vec![("shop", "orders-api", record("other-uid", false))],
        NOW,
    );
    assert_eq!(decide(&d, &t), Err("sa_uid_mismatch"));
    let d = decider(vec![("shop", "orders-api", record(SA_UID, true))], NOW);
    assert_eq!(decide(&d, &t), Err("sa_deleting"));
    let d = decider(vec![("shop", "orders-api2", record(SA_UID, false))], NOW);
    assert_eq!(decide(&d, &t), Err("sa_not_found"));
    // Same name and UID in another namespace is someone else.
    let d = decider(vec![("bank", "orders-api", record(SA_UID, false))], NOW);
    assert_eq!(decide(&d, &t), Err("sa_not_found"));
    // An empty cache-side UID never equals a token's (which is never empty).
    let d = decider(vec![("shop", "orders-api", record("", false))], NOW);
    assert_eq!(decide(&d, &t), Err("sa_uid_mismatch"));
    let d = decider(vec![("shop", "orders-api", record(SA_UID, false))], NOW);
    assert!(decide(&d, &t).is_ok());
}

// ---------------------------------------------------------------------------------------------
// JWKS endpoints that redirect or trickle.

/// A tiny HTTP server on 127.0.0.1 that answers every request with `respond`; stopped on drop.
struct Server {
    base: String,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(respond: impl Fn(tiny_http::Request) + Send + Sync + 'static) -> Server {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let port = server.server_addr().to_ip().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let respond = Arc::new(respond);
        let thread = {
            let (hits, stop) = (hits.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(Some(req)) = server.recv_timeout(Duration::from_millis(20)) {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let respond = respond.clone();
                        std::thread::spawn(move || respond(req));
                    }
                }
            })
        };
        Server {
            base: format!("http://127.0.0.1:{port}"),
            hits,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn url_store(url: String, total: Duration) -> Arc<KeyStore> {
    KeyStore::new(
        vec![IssuerSource {
            issuer: K8S_ISS.into(),
            source: KeySource::Jwks {
                url,
                http: HttpSettings {
                    total_timeout: Some(total),
                    ..default_http(None)
                },
                bearer: None,
            },
        }],
        StoreConfig::default(),
    )
    .unwrap()
}

/// A JWKS endpoint answering with a redirect does not get followed: whoever can make the
/// endpoint redirect must not be able to substitute keys served from elsewhere.
#[test]
fn jwks_redirects_are_not_followed() {
    let jwks = read("k8s-testkeys/jwks.json");
    let elsewhere = Server::start(move |req| {
        let _ = req.respond(tiny_http::Response::from_string(jwks.clone()));
    });
    for status in [301, 302, 303, 307, 308] {
        let target = format!("{}/openid/v1/jwks", elsewhere.base);
        let redirector = Server::start(move |req| {
            let loc = tiny_http::Header::from_bytes("Location", target.as_bytes()).unwrap();
            let _ = req.respond(
                tiny_http::Response::from_string("")
                    .with_status_code(status)
                    .with_header(loc),
            );
        });
        let store = url_store(
            format!("{}/openid/v1/jwks", redirector.base),
            Duration::from_secs(5),
        );
        assert!(store.refresh(K8S_ISS).is_err(), "{status} was followed");
        assert!(!store.ready());
        assert_eq!(redirector.hits.load(Ordering::SeqCst), 1);
    }
    assert_eq!(elsewhere.hits.load(Ordering::SeqCst), 0);
}

/// A body trickling in one byte at a time is cut off by the total deadline.
#[test]
fn a_trickling_jwks_body_is_bounded_by_the_deadline() {
    struct Trickle;
    impl std::io::Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            std::thread::sleep(Duration::from_millis(100));
            if buf.is_empty() {
                return Ok(0);
            }
            buf[0] = b' ';
            Ok(1)
        }
    }
    let slow = Server::start(|req| {
        let _ = req.respond(tiny_http::Response::new(
            tiny_http::StatusCode(200),
            vec![],
            Trickle,
            None,
            None,
        ));
    });
    let store = url_store(
        format!("{}/openid/v1/jwks", slow.base),
        Duration::from_secs(1),
    );
    let started = Instant::now();
    assert!(store.refresh(K8S_ISS).is_err());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(!store.ready());
}

// ---------------------------------------------------------------------------------------------
// Logging: values an attacker may influence cannot forge fields or lines.

const HOSTILE: &[&str] = &[
    "x\n{\"level\":\"ERROR\",\"msg\":\"forged\"}",
    "x\r\nINFO forged line",
    "x\",\"reason\":\"granted",
    "x reason=granted namespace=kube-system",
    "x\u{2028}forged\u{2029}line\u{85}next",
    "x\u{1b}[2J\u{1b}[31mred\u{7}\u{0}\u{7f}\u{9b}31m",
    "x\\\",\\\"level\\\":\\\"ERROR",
];

fn line_logger(format: Format) -> (Logger, MemorySink) {
    let sink = MemorySink::new();
    let logger = Logger::new(
        Filter::parse("trace").unwrap(),
        format,
        Box::new(sink.clone()),
    );
    (logger, sink)
}

#[test]
fn json_log_lines_keep_their_shape_with_hostile_values() {
    log::set_max_level(log::LevelFilter::Trace);
    let (logger, sink) = line_logger(Format::Json);
    for v in HOSTILE {
        sink.clear();
        log::warn!(logger: logger, target: "t", reason = "deny", namespace = *v, entry = *v; "refused {}", v);
        let out = sink.contents();
        assert_eq!(out.matches('\n').count(), 1, "{out:?}");
        let j: Value = serde_json::from_str(out.trim_end_matches('\n')).unwrap();
        let obj = j.as_object().unwrap();
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 7, "{keys:?}");
        assert_eq!(j["reason"], "deny");
        assert_eq!(j["level"], "WARN");
        assert_eq!(j["namespace"], *v);
        assert_eq!(j["entry"], *v);
    }
}

/// The text format is for terminals: a value must not end the line, start a fake field, or
/// carry terminal control sequences.
#[test]
fn text_log_lines_keep_their_shape_with_hostile_values() {
    log::set_max_level(log::LevelFilter::Trace);
    let (logger, sink) = line_logger(Format::Text);
    for v in HOSTILE {
        sink.clear();
        log::warn!(logger: logger, target: "t", reason = "deny", entry = *v; "refused {}", v);
        let out = sink.contents();
        let line = out.strip_suffix('\n').expect("one line");
        for c in line.chars() {
            assert!(
                !c.is_control() && c != '\u{2028}' && c != '\u{2029}',
                "raw {c:?} in {line:?}"
            );
        }
        // Fields (the message is free text): `reason=deny`, then one quoted `entry=`.
        sink.clear();
        log::warn!(logger: logger, target: "t", reason = "deny", entry = *v; "refused");
        let out = sink.contents();
        let line = out.strip_suffix('\n').expect("one line");
        assert!(!line.contains('\n'), "{line:?}");
        let at = line
            .find(": refused reason=deny entry=\"")
            .unwrap_or_else(|| panic!("{line}"));
        assert!(line.ends_with('"'), "{line}");
        let quoted = &line[at + ": refused reason=deny entry=".len()..];
        let inner = &quoted[1..quoted.len() - 1];
        let mut escaped = false;
        for c in inner.chars() {
            assert!(
                escaped || c != '"',
                "unescaped quote ends the value early: {line}"
            );
            escaped = !escaped && c == '\\';
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Policy: subject injection through annotations, inbox separation.

#[test]
fn annotation_injection_attempts() {
    let kept = |entry: &str| {
        let o = evaluate(
            &PolicySettings::default(),
            "shop",
            "api",
            Some(entry),
            Some(entry),
        )
        .unwrap();
        let any_kept = o.entries.iter().any(|e| e.verdict == Verdict::Kept);
        if !any_kept {
            assert_eq!(o.permissions.publish.allow, vec!["shop.>"]);
            assert_eq!(
                o.permissions.subscribe.allow,
                vec!["shop.>", "_INBOX_shop_api.>"]
            );
        }
        any_kept
    };
    for bad in [
        ">",
        "*",
        "*.>",
        "*.*",
        "*.x.>",
        "*.REQ.USER.AUTH",
        "$SYS",
        "$SYS.>",
        "$SYS.REQ.USER.AUTH",
        " $SYS.> ",
        "$SYS.*.>",
        "_INBOX",
        "_INBOX.>",
        "_INBOX.*",
        "_INBOX_bank_svc.>",
        "_INBOX_bank_svc",
        "_INBOX_shop_api.>",
        "_INBOXfoo.>",
        "\u{ff04}SYS.>",
        "$SYS\u{200b}.>",
        "$SYS.>\u{0}",
        "a b",
        "orders queue",
        "a\tb",
        "a\nb",
        "a.>.b",
        "a*.b",
        "a.b>",
        "a..b",
        ".a",
        "a.",
        &format!("a.{}", "b".repeat(600)),
    ] {
        assert!(!kept(bad), "{bad:?} was granted");
    }
    // Near misses that name no reserved subject are fine (NATS subjects are case-sensitive and
    // not %-decoded).
    for ok in [
        "x.*",
        "x.>",
        "shop.>",
        "bank.rates",
        "_inbox_bank_svc.>",
        "%24SYS.>",
        "SYS.>",
        "$SYSTEM.>",
        "x.$SYS.>",
        "x._INBOX.>",
    ] {
        assert!(kept(ok), "{ok:?} was dropped");
    }
}

/// Two different ServiceAccounts never share inbox subjects, no namespace default reaches an
/// inbox or `$SYS`, and the JWT deny lists carry the rails.
#[test]
fn inboxes_and_namespace_defaults_never_overlap() {
    let labels = ["a", "b", "a-b", "a1", "ab", "b-a", "a--b"];
    let mut names: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
    for x in labels {
        for y in labels {
            names.push(format!("{x}.{y}"));
        }
    }
    let mut ids = Vec::new();
    for ns in labels {
        for sa in &names {
            let o = evaluate(&PolicySettings::default(), ns, sa, None, None).unwrap();
            let inbox = format!("{}.>", private_inbox_prefix(ns, sa).unwrap());
            assert_eq!(
                o.permissions.subscribe.allow,
                vec![format!("{ns}.>"), inbox.clone()]
            );
            for rail in ["$SYS", "$SYS.>", "_INBOX", "_INBOX.>"] {
                assert!(o.permissions.publish.deny.contains(&rail.to_string()));
                assert!(o.permissions.subscribe.deny.contains(&rail.to_string()));
                assert!(!subject::intersects(rail, &format!("{ns}.>")));
                assert!(!subject::intersects(rail, &inbox));
            }
            ids.push((ns, sa.clone(), inbox));
        }
    }
    for (i, (ns_a, sa_a, inbox_a)) in ids.iter().enumerate() {
        for (ns_b, sa_b, inbox_b) in &ids[i + 1..] {
            assert!(
                !subject::intersects(inbox_a, inbox_b),
                "{ns_a}/{sa_a} and {ns_b}/{sa_b} share {inbox_a}"
            );
            assert!(!subject::intersects(&format!("{ns_a}.>"), inbox_b));
            assert!(!subject::intersects(&format!("{ns_b}.>"), inbox_a));
        }
    }
    assert!(ids.len() > 300);
}

/// Before the ServiceAccount cache has synced, the decision cannot tell and refuses, unless a
/// direct GET answers; an API error is never read as "exists".
#[test]
fn an_unsynced_cache_refuses_unless_the_api_answers() {
    use nats_k8s_callout::kube::{ApiConfig, CacheConfig, KubeClient};
    let status = Arc::new(AtomicUsize::new(500));
    let api = {
        let status = status.clone();
        Server::start(move |req| {
            let list =
                req.url().ends_with("/serviceaccounts") || req.url().contains("/serviceaccounts?");
            let code = if list {
                500
            } else {
                status.load(Ordering::SeqCst) as u16
            };
            let body = if code == 200 {
                json!({"kind": "ServiceAccount", "metadata": {
                    "name": "orders-api", "namespace": "shop", "uid": SA_UID,
                    "resourceVersion": "5"}})
                .to_string()
            } else {
                json!({"kind": "Status", "code": code}).to_string()
            };
            let _ = req.respond(tiny_http::Response::from_string(body).with_status_code(code));
        })
    };
    let client = KubeClient::new(&ApiConfig::new(&api.base, None, None)).unwrap();
    let (cache, _watcher) = SaCache::start(
        client,
        CacheConfig {
            negative_ttl: Duration::ZERO,
            positive_ttl: Duration::ZERO,
            ..CacheConfig::default()
        },
    );
    assert!(!cache.is_synced());
    let store = KeyStore::new(
        vec![IssuerSource {
            issuer: K8S_ISS.into(),
            source: KeySource::File(vectors::dir().join("k8s-testkeys/jwks.json")),
        }],
        StoreConfig::default(),
    )
    .unwrap();
    store.refresh(K8S_ISS).unwrap();
    let d = K8sDecider::new(
        Validator::new(cfg(), store).unwrap(),
        cache,
        DecisionSettings {
            policy: PolicySettings::default(),
            max_session: Duration::from_secs(3600),
        },
        Arc::new(FixedClock::new(NOW)),
    );
    let t = token(|_| {});
    assert_eq!(decide(&d, &t), Err("cache_not_ready"));
    status.store(403, Ordering::SeqCst);
    assert_eq!(decide(&d, &t), Err("cache_not_ready"));
    status.store(404, Ordering::SeqCst);
    assert_eq!(decide(&d, &t), Err("sa_not_found"));
    status.store(200, Ordering::SeqCst);
    assert_eq!(decide(&d, &t), Ok(Some(NOW + 600)));
}

// ---------------------------------------------------------------------------------------------
// The callout: never a user JWT for an unverified request; refusals carry only a code.

const BEARER: &str = "the-client-bearer-token-value";

fn request(server: &KeyPair, account: &str) -> Claims<AuthorizationRequest> {
    let mut n = AuthorizationRequest::default();
    n.server_id.id = server.public_key();
    n.server_id.name = "s".into();
    n.user_nkey = KeyPair::new_user().public_key();
    n.client_info.host = "127.0.0.1".into();
    n.client_info.name = "x\n{\"level\":\"ERROR\"}".into();
    n.connect_opts.auth_token = Some(Secret::new(BEARER));
    let mut c = Claims::new(account, NOW, n);
    c.aud = REQUEST_AUDIENCE.into();
    c.exp = NOW + 2;
    c
}

/// A decider that admits everyone and counts its calls.
fn permissive(calls: Arc<AtomicUsize>) -> Arc<dyn Decider> {
    Arc::new(move |r: &AuthRequest| {
        calls.fetch_add(1, Ordering::SeqCst);
        if r.bearer_token() == Some("deny-me") {
            return Decision::deny("sa_not_found");
        }
        let mut g = Grant {
            name: "shop/api".into(),
            expires_at: Some(NOW + 60),
            ..Default::default()
        };
        g.permissions.publish.allow.push("shop.>".into());
        Decision::Allow(g)
    })
}

#[test]
fn unverified_requests_never_reach_the_decider() {
    let issuer = KeyPair::new_account();
    let server = KeyPair::new_server();
    let acc = issuer.public_key();
    let calls = Arc::new(AtomicUsize::new(0));
    let cfg = CalloutConfig::new(
        Placement::Config {
            account: "APP".into(),
        },
        Secret::new(issuer.seed().unwrap()),
    );
    let p = Processor::new(
        &cfg,
        permissive(calls.clone()),
        Arc::new(FixedClock::new(NOW)),
    )
    .unwrap();

    // Sanity: a good request is answered with a user JWT for the server's user key.
    let mut c = request(&server, &acc);
    let good = natsjwt::encode(&mut c, &server).unwrap();
    let Outcome::Reply(out) = p.process(None, good.as_bytes()) else {
        panic!("good request not answered")
    };
    let out = String::from_utf8(out).unwrap();
    let r: Claims<AuthorizationResponse> = natsjwt::decode_at(&out, NOW).unwrap();
    let u: Claims<User> = natsjwt::decode_at(&r.nats.jwt, NOW).unwrap();
    assert_eq!(u.sub, c.nats.user_nkey);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Neither the response nor the user JWT echo the client's credential.
    let decoded = |jwt: &str| {
        let p = jwt.split('.').nth(1).unwrap();
        String::from_utf8(BASE64URL_NOPAD.decode(p.as_bytes()).unwrap()).unwrap()
    };
    assert!(!decoded(&out).contains(BEARER) && !decoded(&r.nats.jwt).contains(BEARER));

    type Mutate = Box<dyn Fn(&mut Claims<AuthorizationRequest>)>;
    let other_server = KeyPair::new_server().public_key();
    let other_acc = KeyPair::new_account().public_key();
    let mutations: Vec<(&str, Mutate)> = vec![
        ("aud", Box::new(|c| c.aud = "nats".into())),
        ("no aud", Box::new(|c| c.aud.clear())),
        (
            "server id",
            Box::new(move |c| c.nats.server_id.id = other_server.clone()),
        ),
        ("sub", Box::new(move |c| c.sub = other_acc.clone())),
        (
            "user nkey kind",
            Box::new(|c| c.nats.user_nkey = KeyPair::new_account().public_key()),
        ),
        (
            "user nkey checksum",
            Box::new(|c| {
                let mut k = c.nats.user_nkey.clone().into_bytes();
                let last = k.len() - 1;
                k[last] = if k[last] == b'A' { b'B' } else { b'A' };
                c.nats.user_nkey = String::from_utf8(k).unwrap();
            }),
        ),
        ("no user nkey", Box::new(|c| c.nats.user_nkey.clear())),
        ("expired", Box::new(|c| c.exp = NOW - 1)),
        ("not yet valid", Box::new(|c| c.nbf = NOW + 10)),
    ];
    for (what, m) in &mutations {
        let mut c = request(&server, &acc);
        m(&mut c);
        let t = natsjwt::encode(&mut c, &server).unwrap();
        assert!(
            matches!(p.process(None, t.as_bytes()), Outcome::Drop),
            "{what}"
        );
    }
    // Tampered after signing, signed by another server key, alg none, version 1, garbage.
    let (head, rest) = good.split_once('.').unwrap();
    let (payload, sig) = rest.split_once('.').unwrap();
    let mut claims: Value =
        serde_json::from_slice(&BASE64URL_NOPAD.decode(payload.as_bytes()).unwrap()).unwrap();
    claims["nats"]["user_nkey"] = json!(KeyPair::new_user().public_key());
    let tampered = format!("{head}.{}.{sig}", b64(claims.to_string().as_bytes()));
    let forged = {
        let input = format!("{head}.{payload}");
        let s = KeyPair::new_server().sign(input.as_bytes()).unwrap();
        format!("{input}.{}", b64(&s))
    };
    let none = format!("{}.{payload}.", b64(br#"{"typ":"JWT","alg":"none"}"#));
    let mut v1: Value =
        serde_json::from_slice(&BASE64URL_NOPAD.decode(payload.as_bytes()).unwrap()).unwrap();
    v1["nats"]["version"] = json!(1);
    let v1_payload = b64(v1.to_string().as_bytes());
    let v1 = format!(
        "{head}.{v1_payload}.{}",
        b64(&server.sign(v1_payload.as_bytes()).unwrap())
    );
    for (what, t) in [
        ("tampered", tampered.as_str()),
        ("forged", forged.as_str()),
        ("alg none", none.as_str()),
        ("version 1", v1.as_str()),
        ("trailing part", &format!("{good}.x")),
        ("empty", ""),
    ] {
        assert!(
            matches!(p.process(None, t.as_bytes()), Outcome::Drop),
            "{what}"
        );
    }
    // A sealed request where we have no xkey.
    let server_x = XKey::new();
    let sealed = server_x.seal(good.as_bytes(), &XKey::new()).unwrap();
    assert!(matches!(
        p.process(Some(&server_x.public_key()), &sealed),
        Outcome::Drop
    ));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the decider saw a bad request"
    );

    // A refusal carries the reason code and nothing else the client sent.
    let mut c = request(&server, &acc);
    c.nats.connect_opts.auth_token = Some(Secret::new("deny-me"));
    let t = natsjwt::encode(&mut c, &server).unwrap();
    let Outcome::Reply(out) = p.process(None, t.as_bytes()) else {
        panic!("denial not answered")
    };
    let out = String::from_utf8(out).unwrap();
    let r: Claims<AuthorizationResponse> = natsjwt::decode_at(&out, NOW).unwrap();
    assert_eq!(r.nats.error, "sa_not_found");
    assert!(r.nats.jwt.is_empty());
    assert!(!decoded(&out).contains("deny-me"));
}

/// With an xkey configured, only sealed requests whose JWT names the sealing server key are
/// answered.
#[test]
fn xkey_requests_must_be_sealed_by_the_key_they_name() {
    let issuer = KeyPair::new_account();
    let server = KeyPair::new_server();
    let acc = issuer.public_key();
    let ours = XKey::new();
    let mut cfg = CalloutConfig::new(
        Placement::Config {
            account: "APP".into(),
        },
        Secret::new(issuer.seed().unwrap()),
    );
    cfg.xkey_seed = Some(Secret::new(ours.seed().unwrap()));
    let calls = Arc::new(AtomicUsize::new(0));
    let p = Processor::new(
        &cfg,
        permissive(calls.clone()),
        Arc::new(FixedClock::new(NOW)),
    )
    .unwrap();
    let ours_pub = XKey::from_public_key(&ours.public_key()).unwrap();
    let server_x = XKey::new();
    let sealed_request = |claim_xkey: &str, sealer: &XKey| {
        let mut c = request(&server, &acc);
        c.nats.server_id.xkey = claim_xkey.to_string();
        let t = natsjwt::encode(&mut c, &server).unwrap();
        (t.clone(), sealer.seal(t.as_bytes(), &ours_pub).unwrap())
    };
    let (plain, sealed) = sealed_request(&server_x.public_key(), &server_x);
    let Outcome::Reply(out) = p.process(Some(&server_x.public_key()), &sealed) else {
        panic!("good sealed request not answered")
    };
    assert!(out.starts_with(b"xkv1"), "response not sealed");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Plain while we require sealing.
    assert!(matches!(p.process(None, plain.as_bytes()), Outcome::Drop));
    // Sealed by another key than the header names.
    let other = XKey::new();
    let (_, by_other) = sealed_request(&server_x.public_key(), &other);
    assert!(matches!(
        p.process(Some(&server_x.public_key()), &by_other),
        Outcome::Drop
    ));
    // Sealed and labelled consistently, but the signed JWT names another server xkey.
    let (_, mislabelled) = sealed_request(&server_x.public_key(), &other);
    assert!(matches!(
        p.process(Some(&other.public_key()), &mislabelled),
        Outcome::Drop
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// `_R_.…` are the server's reply subjects for requests arriving through a service import
/// (`_GR_.…` for replies routed between clusters). Checked by hand against nats-server 2.15.1:
/// a user of the exporting account subscribed to `_R_.>` received the reply meant for the
/// importing account's requester. Annotations must not grant them, like `_INBOX`.
#[test]
fn server_reply_prefixes_are_reserved() {
    for entry in ["_R_.>", "_R_.*.*", "_R_.abc.def", "_GR_.>", "_GR_.a.b.>"] {
        let o = evaluate(
            &PolicySettings::default(),
            "shop",
            "api",
            Some(entry),
            Some(entry),
        )
        .unwrap();
        assert_eq!(o.permissions.publish.allow, vec!["shop.>"], "{entry}");
        assert_eq!(
            o.permissions.subscribe.allow,
            vec!["shop.>", "_INBOX_shop_api.>"],
            "{entry}"
        );
        assert!(
            o.dropped().all(|(_, r)| r.code() == "reserved_inbox"),
            "{entry}: {:?}",
            o.entries
        );
    }
    for entry in ["_R_x.>", "x._R_.>", "R_.>", "_r_.>"] {
        let o = evaluate(&PolicySettings::default(), "shop", "api", None, Some(entry)).unwrap();
        assert!(
            o.permissions.subscribe.allow.contains(&entry.to_string()),
            "{entry}"
        );
    }
}

/// Keys named or embedded in the token header (`jwk`, `jku`, `x5u`, `x5c`) are never used or
/// fetched: a token signed by the attacker's own key with that key in its header is refused.
#[test]
fn header_supplied_keys_are_ignored() {
    use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = key.public_key().as_ref();
    let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..])});
    let fetched = Server::start(|req| {
        let _ = req.respond(tiny_http::Response::from_string("{}"));
    });
    let url = format!("{}/keys", fetched.base);
    for header in [
        json!({"alg": "ES256", "jwk": jwk}),
        json!({"alg": "ES256", "kid": "attacker", "jwk": jwk}),
        json!({"alg": "ES256", "jku": url}),
        json!({"alg": "ES256", "kid": EC_KID, "jku": url, "x5u": url}),
        json!({"alg": "ES256", "x5c": ["MIIB"]}),
    ] {
        let inp = input(&header.to_string(), &claims(|_| {}).to_string());
        let sig = key.sign(&rng, inp.as_bytes()).unwrap();
        let t = format!("{inp}.{}", b64(sig.as_ref()));
        let err = check(&t).unwrap_err();
        assert!(
            matches!(err, TokenError::Signature | TokenError::UnknownKid),
            "{header}: {err:?}"
        );
    }
    assert_eq!(fetched.hits.load(Ordering::SeqCst), 0);
}

/// Anyone can send a token naming a fresh kid: no signature is needed to reach the key
/// lookup. Hundreds of distinct kids cause one JWKS fetch, and nobody waits long.
#[test]
fn unsigned_tokens_with_many_distinct_kids_cause_one_fetch() {
    let jwks = read("k8s-testkeys/jwks.json");
    let issuer = Server::start(move |req| {
        let _ = req.respond(tiny_http::Response::from_string(jwks.clone()));
    });
    let store = url_store(
        format!("{}/openid/v1/jwks", issuer.base),
        Duration::from_secs(5),
    );
    store.refresh(K8S_ISS).unwrap();
    assert_eq!(issuer.hits.load(Ordering::SeqCst), 1);
    let v = Arc::new(Validator::new(cfg(), store).unwrap());
    let payload = claims(|_| {}).to_string();
    let started = Instant::now();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (v, payload) = (v.clone(), payload.clone());
            std::thread::spawn(move || {
                for i in 0..50 {
                    let h = json!({"alg": "RS256", "kid": format!("junk-{t}-{i}")}).to_string();
                    let junk = format!("{}.{}", input(&h, &payload), b64(&[0u8; 256]));
                    assert_eq!(v.validate(&junk, NOW).unwrap_err(), TokenError::UnknownKid);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(issuer.hits.load(Ordering::SeqCst), 2, "400 kids, one fetch");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // A genuine token still verifies meanwhile.
    assert!(v.validate(&token(|_| {}), NOW).is_ok());
}

/// While a JWKS fetch is slow (API server overloaded or unreachable), junk tokens naming
/// unknown kids must not hold every decision worker for the whole fetch: the bounded wait
/// counts from the start of the fetch, so later lookups fail at once (the client retries and
/// the fetch, when it lands, serves the retry). Before, each lookup waited up to a full
/// second again, so a handful of junk connects per second kept all workers blocked for as
/// long as the fetch took (up to its 10 s deadline).
#[test]
fn a_slow_jwks_fetch_does_not_let_junk_tokens_hold_workers() {
    let jwks = read("k8s-testkeys/jwks.json");
    let delay_ms = Arc::new(AtomicUsize::new(0));
    let issuer = {
        let delay_ms = delay_ms.clone();
        Server::start(move |req| {
            std::thread::sleep(Duration::from_millis(delay_ms.load(Ordering::SeqCst) as u64));
            let _ = req.respond(tiny_http::Response::from_string(jwks.clone()));
        })
    };
    let store = url_store(
        format!("{}/openid/v1/jwks", issuer.base),
        Duration::from_secs(10),
    );
    store.refresh(K8S_ISS).unwrap();
    let v = Arc::new(Validator::new(cfg(), store).unwrap());
    let payload = claims(|_| {}).to_string();
    let junk = move |i: usize| {
        let h = json!({"alg": "RS256", "kid": format!("junk-{i}")}).to_string();
        format!("{}.{}", input(&h, &payload), b64(&[0u8; 256]))
    };
    delay_ms.store(4000, Ordering::SeqCst);
    // The first junk token starts a fetch and waits (bounded) for it.
    let started = Instant::now();
    assert_eq!(
        v.validate(&junk(0), NOW).unwrap_err(),
        TokenError::UnknownKid
    );
    let first = started.elapsed();
    assert!(first < Duration::from_millis(2500), "{first:?}");
    // The fetch is still in flight: four workers' worth of junk now returns promptly.
    let threads: Vec<_> = (0..4)
        .map(|w| {
            let (v, junk) = (v.clone(), junk.clone());
            std::thread::spawn(move || {
                let mut worst = Duration::ZERO;
                for i in 0..5 {
                    let t = Instant::now();
                    assert_eq!(
                        v.validate(&junk(100 * (w + 1) + i), NOW).unwrap_err(),
                        TokenError::UnknownKid
                    );
                    worst = worst.max(t.elapsed());
                }
                worst
            })
        })
        .collect();
    for t in threads {
        let worst = t.join().unwrap();
        assert!(
            worst < Duration::from_millis(500),
            "a junk lookup waited {worst:?} for a fetch already past its wait"
        );
    }
    assert_eq!(issuer.hits.load(Ordering::SeqCst), 2);
    // A genuine token is unaffected.
    assert!(v.validate(&token(|_| {}), NOW).is_ok());
}
