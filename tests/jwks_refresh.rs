//! JWKS sources and refresh against an in-test HTTP issuer (tiny_http on 127.0.0.1, free
//! port) that serves a swappable JWKS, counts hits, can fail, slow down or go away, and, like
//! kube-apiserver, answers 406 unless the Accept header allows `application/jwk-set+json`.
//!
//! Vectors are found at `$NATS_K8S_VECTORS_DIR`, else `<CARGO_MANIFEST_DIR>/../shared/vectors`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nats_k8s_callout::httpclient::HttpSettings;
use nats_k8s_callout::jwks::{
    default_http, start_refresher, IssuerSource, JwksError, KeySource, KeyStore, StoreConfig,
};
use nats_k8s_callout::testkit::vectors::read;
use nats_k8s_callout::token::{TokenConfig, TokenError, Validator};

const K8S_ISS: &str = "https://kubernetes.default.svc.cluster.local";
const NOW: u64 = 1_767_229_320;

struct State {
    jwks: String,
    status: u16,
    cache_control: Option<String>,
    delay: Duration,
    discovery_issuer: Option<String>,
}

/// A fake issuer. Stops (and frees its port) on drop or [`Fake::go_down`].
struct Fake {
    base: String,
    state: Arc<Mutex<State>>,
    jwks_hits: Arc<AtomicUsize>,
    discovery_hits: Arc<AtomicUsize>,
    last_accept: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Fake {
    fn start(jwks: &str) -> Fake {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let port = server.server_addr().to_ip().unwrap().port();
        let base = format!("http://127.0.0.1:{port}");
        let state = Arc::new(Mutex::new(State {
            jwks: jwks.to_string(),
            status: 200,
            cache_control: Some("public, max-age=3600".into()),
            delay: Duration::ZERO,
            discovery_issuer: None,
        }));
        let (jwks_hits, discovery_hits) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let last_accept = Arc::new(Mutex::new(String::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, jh, dh, la, stop, base) = (
                state.clone(),
                jwks_hits.clone(),
                discovery_hits.clone(),
                last_accept.clone(),
                stop.clone(),
                base.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let Ok(Some(req)) = server.recv_timeout(Duration::from_millis(20)) else {
                        continue;
                    };
                    let accept = req
                        .headers()
                        .iter()
                        .find(|h| h.field.equiv("Accept"))
                        .map(|h| h.value.as_str().to_string())
                        .unwrap_or_default();
                    let (code, body, cc) = match req.url() {
                        "/openid/v1/jwks" => {
                            jh.fetch_add(1, Ordering::SeqCst);
                            *la.lock().unwrap() = accept.clone();
                            let (delay, st) = {
                                let s = state.lock().unwrap();
                                (s.delay, (s.status, s.jwks.clone(), s.cache_control.clone()))
                            };
                            std::thread::sleep(delay);
                            if accept.contains("application/jwk-set+json") || accept.contains("*/*")
                            {
                                st
                            } else {
                                (406, String::new(), None)
                            }
                        }
                        "/.well-known/openid-configuration" => {
                            dh.fetch_add(1, Ordering::SeqCst);
                            let iss = state
                                .lock()
                                .unwrap()
                                .discovery_issuer
                                .clone()
                                .unwrap_or_else(|| base.clone());
                            let doc = serde_json::json!({
                                "issuer": iss,
                                "jwks_uri": format!("{base}/openid/v1/jwks"),
                                "response_types_supported": ["id_token"],
                                "subject_types_supported": ["public"],
                                "id_token_signing_alg_values_supported": ["ES256", "RS256"],
                            });
                            (200, doc.to_string(), None)
                        }
                        _ => (404, String::new(), None),
                    };
                    let mut resp = tiny_http::Response::from_string(body).with_status_code(code);
                    if let Some(cc) = cc {
                        resp = resp.with_header(
                            tiny_http::Header::from_bytes("Cache-Control", cc.as_bytes()).unwrap(),
                        );
                    }
                    let _ = req.respond(resp);
                }
            })
        };
        Fake {
            base,
            state,
            jwks_hits,
            discovery_hits,
            last_accept,
            stop,
            thread: Some(thread),
        }
    }

    fn jwks_url(&self) -> String {
        format!("{}/openid/v1/jwks", self.base)
    }
    fn hits(&self) -> usize {
        self.jwks_hits.load(Ordering::SeqCst)
    }
    fn set(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().unwrap())
    }
    fn go_down(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.go_down();
    }
}

fn url_store(fake: &Fake, cfg: StoreConfig) -> Arc<KeyStore> {
    KeyStore::new(
        vec![IssuerSource {
            issuer: K8S_ISS.into(),
            source: KeySource::Jwks {
                url: fake.jwks_url(),
                // Short deadlines: a pooled connection to a stopped fake hangs until them.
                http: HttpSettings {
                    total_timeout: Some(Duration::from_secs(2)),
                    ..default_http(None)
                },
                bearer: None,
            },
        }],
        cfg,
    )
    .unwrap()
}

fn validator(store: &Arc<KeyStore>) -> Validator {
    Validator::new(
        TokenConfig::new(vec![K8S_ISS.into()], vec!["nats".into()]),
        store.clone(),
    )
    .unwrap()
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "not within 5 s: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn fast() -> StoreConfig {
    StoreConfig {
        unknown_kid_min_interval: Duration::ZERO,
        in_flight_wait: Duration::from_secs(5),
        default_refresh: Duration::from_secs(3600),
        min_refresh: Duration::from_millis(50),
        max_refresh: Duration::from_secs(3600),
        file_poll: Duration::from_millis(50),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
    }
}

#[test]
fn rotated_key_is_accepted_after_exactly_one_refresh() {
    let fake = Fake::start(&read("k8s-testkeys/jwks-only-other.json"));
    let store = url_store(&fake, fast());
    assert!(!store.ready());
    store.refresh(K8S_ISS).unwrap();
    assert!(store.ready());
    assert_eq!(fake.hits(), 1);
    assert!(fake
        .last_accept
        .lock()
        .unwrap()
        .starts_with("application/jwk-set+json"));
    let v = validator(&store);
    let pod = read("k8s-testkeys/valid_rs256_pod.jwt");

    // Not published yet: one refresh, still unknown.
    assert_eq!(v.validate(&pod, NOW).unwrap_err(), TokenError::UnknownKid);
    assert_eq!(fake.hits(), 2);
    // Published: accepted after exactly one more fetch, then served from memory.
    fake.set(|s| s.jwks = read("k8s-testkeys/jwks-rotated.json"));
    assert!(v.validate(&pod, NOW).is_ok());
    assert_eq!(fake.hits(), 3);
    assert!(v.validate(&pod, NOW).is_ok());
    assert!(v
        .validate(&read("k8s-testkeys/valid_es256_pod.jwt"), NOW)
        .is_ok());
    assert_eq!(fake.hits(), 3);
    assert_eq!(store.key_set(K8S_ISS).unwrap().len(), 3);

    // A known kid with a bad signature, or a kid of the wrong key type, never fetches.
    for (file, code) in [
        ("reject_bad_signature.jwt", TokenError::Signature),
        ("reject_kid_alg_mismatch.jwt", TokenError::UnknownKid),
        ("reject_es256_der_signature.jwt", TokenError::Signature),
    ] {
        let t = read(&format!("k8s-testkeys/{file}"));
        assert_eq!(v.validate(&t, NOW).unwrap_err(), code, "{file}");
    }
    assert_eq!(fake.hits(), 3);
    // A kid nobody knows fetches once per lookup here (rate limit 0 in this test).
    let unknown = read("k8s-testkeys/reject_unknown_kid.jwt");
    assert_eq!(
        v.validate(&unknown, NOW).unwrap_err(),
        TokenError::UnknownKid
    );
    assert_eq!(fake.hits(), 4);
}

#[test]
fn unknown_kid_refreshes_are_rate_limited_per_issuer() {
    let fake = Fake::start(&read("k8s-testkeys/jwks-only-other.json"));
    let store = url_store(
        &fake,
        StoreConfig {
            unknown_kid_min_interval: Duration::from_secs(60),
            ..fast()
        },
    );
    store.refresh(K8S_ISS).unwrap();
    let v = Arc::new(validator(&store));
    let pod = read("k8s-testkeys/valid_rs256_pod.jwt");
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (v, pod) = (v.clone(), pod.clone());
            std::thread::spawn(move || {
                for _ in 0..10 {
                    assert_eq!(v.validate(&pod, NOW).unwrap_err(), TokenError::UnknownKid);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(fake.hits(), 2, "160 lookups of an unknown kid, one fetch");
    // Even once the key is published, lookups stay rate-limited (rejected at once)...
    fake.set(|s| s.jwks = read("k8s-testkeys/jwks-rotated.json"));
    assert_eq!(v.validate(&pod, NOW).unwrap_err(), TokenError::UnknownKid);
    assert_eq!(fake.hits(), 2);
    // ...until a periodic refresh picks it up.
    store.refresh(K8S_ISS).unwrap();
    assert_eq!(fake.hits(), 3);
    assert!(v.validate(&pod, NOW).is_ok());
    let text = nats_k8s_callout::metrics::global().render();
    assert!(text.contains("nats_k8s_callout_jwks_unknown_kid_rate_limited_total"));
    assert!(text.contains("nats_k8s_callout_jwks_refreshes_total"));
}

#[test]
fn concurrent_lookups_share_one_in_flight_fetch() {
    let fake = Fake::start(&read("k8s-testkeys/jwks-only-other.json"));
    let store = url_store(
        &fake,
        StoreConfig {
            unknown_kid_min_interval: Duration::from_secs(60),
            ..fast()
        },
    );
    store.refresh(K8S_ISS).unwrap();
    fake.set(|s| {
        s.jwks = read("k8s-testkeys/jwks-rotated.json");
        s.delay = Duration::from_millis(300);
    });
    let v = Arc::new(validator(&store));
    let pod = read("k8s-testkeys/valid_rs256_pod.jwt");
    let barrier = Arc::new(Barrier::new(12));
    let threads: Vec<_> = (0..12)
        .map(|_| {
            let (v, pod, b) = (v.clone(), pod.clone(), barrier.clone());
            std::thread::spawn(move || {
                b.wait();
                v.validate(&pod, NOW).map(|_| ())
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(fake.hits(), 2, "one fetch for all");
    assert!(
        results.iter().all(|r| r.is_ok()),
        "waiters see the new keys: {results:?}"
    );
}

#[test]
fn unknown_kid_lookup_waits_a_bounded_time_and_the_fetch_still_lands() {
    let fake = Fake::start(&read("k8s-testkeys/jwks-only-other.json"));
    let store = url_store(
        &fake,
        StoreConfig {
            unknown_kid_min_interval: Duration::from_secs(60),
            in_flight_wait: Duration::from_millis(100),
            ..fast()
        },
    );
    store.refresh(K8S_ISS).unwrap();
    fake.set(|s| {
        s.jwks = read("k8s-testkeys/jwks-rotated.json");
        s.delay = Duration::from_millis(1200);
    });
    let v = validator(&store);
    let pod = read("k8s-testkeys/valid_rs256_pod.jwt");
    let t = Instant::now();
    assert_eq!(v.validate(&pod, NOW).unwrap_err(), TokenError::UnknownKid);
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "the lookup must not wait for the slow server: {:?}",
        t.elapsed()
    );
    // The client's retry is served by the fetch that went on in the background.
    eventually("background fetch lands", || v.validate(&pod, NOW).is_ok());
    assert_eq!(fake.hits(), 2);
}

#[test]
fn outages_and_bad_answers_keep_the_last_good_keys() {
    let mut fake = Fake::start(&read("k8s-testkeys/jwks.json"));
    fake.set(|s| s.cache_control = Some("max-age=0".into()));
    let store = url_store(&fake, fast());
    let handle = start_refresher(store.clone()).unwrap();
    eventually("ready", || store.ready());
    let v = validator(&store);
    let pod = read("k8s-testkeys/valid_rs256_pod.jwt");
    assert!(v.validate(&pod, NOW).is_ok());

    let huge = format!(r#"{{"keys":[],"pad":"{}"}}"#, "x".repeat(1024 * 1024));
    let many = format!(
        r#"{{"keys":[{}]}}"#,
        vec![r#"{"kty":"oct","k":"AA"}"#; 101].join(",")
    );
    let bad: Vec<(u16, String)> = vec![
        (500, read("k8s-testkeys/jwks.json")),
        (404, String::new()),
        (200, "not json".into()),
        (200, r#"{"keys":[]}"#.into()),
        (
            200,
            read("k8s-testkeys/jwks-only-other.json").replace("RSA", "XYZ"),
        ),
        (200, huge),
        (200, many),
    ];
    for (status, body) in bad {
        fake.set(|s| {
            s.status = status;
            s.jwks = body;
        });
        let h = fake.hits();
        eventually("three failed refreshes", || fake.hits() >= h + 3);
        assert!(store.ready(), "status {status}");
        assert_eq!(store.key_set(K8S_ISS).unwrap().len(), 2);
        assert!(v.validate(&pod, NOW).is_ok(), "status {status}");
    }
    // (A refresh may join the refresher's fetch in flight and report its result.)
    eventually("parse error reported", || {
        matches!(store.refresh(K8S_ISS), Err(JwksError::Parse(_)))
    });
    fake.go_down();
    eventually("transport error reported", || {
        matches!(store.refresh(K8S_ISS), Err(JwksError::Transport(_)))
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(store.ready());
    assert!(v.validate(&pod, NOW).is_ok());
    let t = Instant::now();
    handle.stop();
    assert!(t.elapsed() < Duration::from_secs(5));
}

/// Each kind of bad answer is reported with its own reason code (the `reason` of the refresh
/// log line and metric), from a JWKS URL and from a file alike.
#[test]
fn bad_answers_are_reported_with_their_own_reason() {
    let fake = Fake::start(&read("k8s-testkeys/jwks.json"));
    let store = url_store(&fake, fast());
    let huge = format!(r#"{{"keys":[],"pad":"{}"}}"#, "x".repeat(1024 * 1024));
    let unusable = read("k8s-testkeys/jwks-only-other.json").replace("RSA", "XYZ");
    for (status, body, code) in [
        (500, read("k8s-testkeys/jwks.json"), "http_status"),
        (200, "not json".to_string(), "parse"),
        (200, unusable, "no_usable_keys"),
        (200, huge.clone(), "too_large"),
    ] {
        fake.set(|s| {
            s.status = status;
            s.jwks = body;
        });
        let err = store.refresh(K8S_ISS).unwrap_err();
        assert_eq!(err.code(), code, "{err}");
    }
    assert!(!store.ready());

    let dir = std::env::temp_dir().join(format!("jwks-large-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("jwks.json");
    std::fs::write(&path, &huge).unwrap();
    let file = KeyStore::new(
        vec![IssuerSource {
            issuer: K8S_ISS.into(),
            source: KeySource::File(path.clone()),
        }],
        fast(),
    )
    .unwrap();
    assert_eq!(file.refresh(K8S_ISS).unwrap_err(), JwksError::TooLarge);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(file.refresh(K8S_ISS).unwrap_err().code(), "io");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn cache_control_max_age_sets_the_period_within_bounds() {
    let short = Fake::start(&read("k8s-testkeys/jwks.json"));
    short.set(|s| s.cache_control = Some("public, max-age=0".into()));
    let long = Fake::start(&read("k8s-testkeys/jwks.json"));
    long.set(|s| s.cache_control = None);
    let cfg = StoreConfig {
        min_refresh: Duration::from_millis(100),
        default_refresh: Duration::from_secs(60),
        ..fast()
    };
    let a = url_store(&short, cfg.clone());
    let b = url_store(&long, cfg);
    let ha = start_refresher(a.clone()).unwrap();
    let hb = start_refresher(b.clone()).unwrap();
    eventually("both ready", || a.ready() && b.ready());
    eventually("max-age=0 refreshes at the 100 ms floor", || {
        short.hits() >= 5
    });
    assert_eq!(long.hits(), 1, "no max-age: the 60 s default");
    drop(ha);
    hb.stop();
    let h = short.hits();
    std::thread::sleep(Duration::from_millis(300));
    assert!(short.hits() <= h + 1, "refresher stopped");
}

#[test]
fn discovery_requires_the_exact_issuer() {
    let fake = Fake::start(&read("k8s-testkeys/jwks.json"));
    let discovery = |issuer: &str| {
        KeyStore::new(
            vec![IssuerSource {
                issuer: issuer.into(),
                source: KeySource::Discovery {
                    http: default_http(None),
                    bearer: None,
                },
            }],
            fast(),
        )
        .unwrap()
    };
    let ok = discovery(&fake.base);
    ok.refresh(&fake.base).unwrap();
    assert!(ok.ready());
    assert_eq!(ok.key_set(&fake.base).unwrap().len(), 2);
    assert_eq!(
        (fake.discovery_hits.load(Ordering::SeqCst), fake.hits()),
        (1, 1)
    );

    // Trailing slash: not the same issuer string.
    let slash = format!("{}/", fake.base);
    let s = discovery(&slash);
    assert!(matches!(s.refresh(&slash), Err(JwksError::Discovery(_))));
    // The document names another issuer.
    fake.set(|s| s.discovery_issuer = Some("https://evil.example".into()));
    let evil = discovery(&fake.base);
    let err = evil.refresh(&fake.base).unwrap_err();
    assert!(matches!(err, JwksError::Discovery(_)), "{err}");
    assert!(!evil.ready());
    assert_eq!(
        fake.hits(),
        1,
        "jwks_uri of a mismatching document is not fetched"
    );
}

#[test]
fn jwks_file_is_reloaded_when_it_changes() {
    let dir = std::env::temp_dir().join(format!("jwks-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("jwks.json");
    std::fs::write(&path, read("k8s-testkeys/jwks-only-other.json")).unwrap();
    let store = KeyStore::new(
        vec![IssuerSource {
            issuer: K8S_ISS.into(),
            source: KeySource::File(path.clone()),
        }],
        StoreConfig {
            unknown_kid_min_interval: Duration::from_secs(60),
            ..fast()
        },
    )
    .unwrap();
    let handle = start_refresher(store.clone()).unwrap();
    eventually("ready", || store.ready());
    let v = validator(&store);
    let pod = read("k8s-testkeys/valid_rs256_pod.jwt");
    assert_eq!(v.validate(&pod, NOW).unwrap_err(), TokenError::UnknownKid);
    std::fs::write(&path, read("k8s-testkeys/jwks-rotated.json")).unwrap();
    eventually("new file loaded", || v.validate(&pod, NOW).is_ok());
    assert_eq!(store.key_set(K8S_ISS).unwrap().len(), 3);
    // A broken or missing file keeps the keys.
    std::fs::write(&path, "{").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(v.validate(&pod, NOW).is_ok());
    std::fs::remove_file(&path).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(v.validate(&pod, NOW).is_ok() && store.ready());
    // And a good file is picked up again.
    std::fs::write(&path, read("k8s-testkeys/jwks-only-other.json")).unwrap();
    eventually("old set back", || v.validate(&pod, NOW).is_err());
    handle.stop();
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn store_setup_refuses_unsafe_or_ambiguous_sources() {
    let tf = Arc::new(nats_k8s_callout::httpclient::TokenFile::new(
        "/nonexistent/token",
        Duration::from_secs(60),
    ));
    let plain_with_bearer = KeyStore::new(
        vec![IssuerSource {
            issuer: K8S_ISS.into(),
            source: KeySource::Jwks {
                url: "http://127.0.0.1:1/openid/v1/jwks".into(),
                http: default_http(None),
                bearer: Some(tf),
            },
        }],
        StoreConfig::default(),
    );
    assert!(plain_with_bearer.unwrap_err().contains("plain http"));
    let file = |p: &str| IssuerSource {
        issuer: K8S_ISS.into(),
        source: KeySource::File(p.into()),
    };
    assert!(
        KeyStore::new(vec![file("a"), file("b")], StoreConfig::default())
            .unwrap_err()
            .contains("twice")
    );
    assert!(KeyStore::new(vec![], StoreConfig::default()).is_err());
    // The validator needs a key source for every configured issuer.
    let store = KeyStore::new(vec![file("a")], StoreConfig::default()).unwrap();
    let cfg = TokenConfig::new(
        vec![K8S_ISS.into(), "https://other".into()],
        vec!["nats".into()],
    );
    assert!(Validator::new(cfg, store)
        .unwrap_err()
        .contains("no key source"));
}

#[test]
fn several_issuers_each_with_their_own_keys() {
    let fake = Fake::start(&read("k8s-testkeys/jwks.json"));
    let dir = std::env::temp_dir().join(format!("jwks-multi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let eks_file = dir.join("eks.json");
    let eks: serde_json::Value = serde_json::from_str(&read("eks-peer/expected.json")).unwrap();
    let eks_iss = eks["issuer"].as_str().unwrap();
    let store = KeyStore::new(
        vec![
            IssuerSource {
                issuer: K8S_ISS.into(),
                source: KeySource::Jwks {
                    url: fake.jwks_url(),
                    http: default_http(None),
                    bearer: None,
                },
            },
            IssuerSource {
                issuer: eks_iss.into(),
                source: KeySource::File(eks_file.clone()),
            },
        ],
        fast(),
    )
    .unwrap();
    let handle = start_refresher(store.clone()).unwrap();
    eventually("first issuer loaded", || {
        store.key_set(K8S_ISS).is_some_and(|k| !k.is_empty())
    });
    assert!(!store.ready(), "ready only when every issuer has keys");
    std::fs::write(&eks_file, read("eks-peer/jwks.json")).unwrap();
    eventually("both issuers loaded", || store.ready());
    assert_eq!(store.key_set(eks_iss).unwrap().len(), 13);

    let cfg = TokenConfig::new(
        vec![K8S_ISS.into(), eks_iss.into()],
        vec!["nats".into(), "sts.amazonaws.com".into()],
    );
    let v = Validator::new(cfg, store.clone()).unwrap();
    assert!(v
        .validate(&read("k8s-testkeys/valid_rs256_pod.jwt"), NOW)
        .is_ok());
    let eks_tok = read("eks-peer/token.jwt");
    let eks_now = eks["iat"].as_u64().unwrap() + 10;
    assert_eq!(v.validate(&eks_tok, eks_now).unwrap().namespace, "hakawai");
    // A token is only ever checked against its own issuer's keys: the no-kid k8s token fails
    // once its issuer has only foreign keys, even though another issuer holds the right key.
    fake.set(|s| s.jwks = read("eks-peer/jwks.json"));
    store.refresh(K8S_ISS).unwrap();
    assert_eq!(
        v.validate(&read("k8s-testkeys/valid_rs256_no_kid.jwt"), NOW)
            .unwrap_err(),
        TokenError::Signature
    );
    handle.stop();
    std::fs::remove_dir_all(&dir).ok();
}
