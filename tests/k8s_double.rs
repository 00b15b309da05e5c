//! The Kubernetes API double against the recorded kube-apiserver fixtures
//! (`shared/vectors/k8s-api-fixtures`): same keys and shapes, exact Status bodies.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nats_k8s_callout::testkit::k8s_double::{DoubleOptions, Fault, K8sDouble, Target};
use nats_k8s_callout::testkit::vectors;
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let p = vectors::dir().join("k8s-api-fixtures").join(name);
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

fn ndjson(name: &str) -> Vec<Value> {
    let p = vectors::dir().join("k8s-api-fixtures").join(name);
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent()
}

/// GET with an optional bearer token: (status, content-type, body).
fn get(d: &K8sDouble, path: &str, token: Option<&str>) -> (u16, String, Value) {
    let mut req = agent().get(format!("{}{path}", d.url()));
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let mut resp = req.call().unwrap();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = resp.body_mut().read_to_string().unwrap();
    (
        resp.status().as_u16(),
        ct,
        serde_json::from_str(&body).unwrap_or(Value::Null),
    )
}

fn seed(d: &K8sDouble) {
    d.create_sa_full(
        "billing",
        "default",
        Some("11111111-2222-4333-8444-555555555555"),
        &[],
        &[],
    );
    d.create_sa_full(
        "billing",
        "invoicer",
        Some("a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"),
        &[("app.kubernetes.io/name", "invoicer")],
        &[
            ("nats.example.io/publish", "billing.>"),
            ("nats.example.io/subscribe", "billing.>, _INBOX.>"),
        ],
    );
    d.create_sa_full("shop", "default", None, &[], &[]);
    d.create_sa_full("shop", "legacy-bot", None, &[], &[]);
    d.create_sa_full(
        "shop",
        "orders-api",
        Some("6c0a5d1e-3f2b-4c8e-9a7d-1b2c3d4e5f60"),
        &[("app.kubernetes.io/name", "orders-api")],
        &[("nats.example.io/publish", "orders.>")],
    );
}

#[test]
fn list_pages_have_the_fixture_shape_constant_rv_and_no_item_kind() {
    let d = K8sDouble::start(DoubleOptions::default()).unwrap();
    seed(&d);
    let tok = d.token();
    let fx = [
        fixture("serviceaccounts-list-page1.json"),
        fixture("serviceaccounts-list-page2.json"),
        fixture("serviceaccounts-list-page3.json"),
    ];
    let mut cont: Option<String> = None;
    let mut names = Vec::new();
    let mut rvs = BTreeSet::new();
    for (i, f) in fx.iter().enumerate() {
        let path = match &cont {
            Some(c) => format!("/api/v1/serviceaccounts?limit=2&continue={c}"),
            None => "/api/v1/serviceaccounts?limit=2".to_string(),
        };
        let (code, ct, page) = get(&d, &path, Some(&tok));
        assert_eq!(code, 200, "page {i}: {page}");
        assert_eq!(ct, "application/json");
        assert_eq!(keys(&page), keys(f));
        assert_eq!(keys(&page["metadata"]), keys(&f["metadata"]), "page {i}");
        assert_eq!(page["kind"], "ServiceAccountList");
        for item in page["items"].as_array().unwrap() {
            assert!(item.get("kind").is_none() && item.get("apiVersion").is_none());
            let m = &item["metadata"];
            for k in [
                "name",
                "namespace",
                "uid",
                "resourceVersion",
                "creationTimestamp",
            ] {
                assert!(m[k].is_string(), "{k} in {m}");
            }
            names.push(format!(
                "{}/{}",
                m["namespace"].as_str().unwrap(),
                m["name"].as_str().unwrap()
            ));
        }
        rvs.insert(
            page["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        cont = page["metadata"]["continue"].as_str().map(|c| {
            // percent-encode like a client must (tokens may hold '=')
            c.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect()
        });
    }
    assert!(cont.is_none(), "three pages of two for five items");
    assert_eq!(rvs.len(), 1, "constant RV across pages: {rvs:?}");
    assert_eq!(
        names,
        [
            "billing/default",
            "billing/invoicer",
            "shop/default",
            "shop/legacy-bot",
            "shop/orders-api"
        ]
    );
    // Unpaginated list equals the full-list fixture in shape.
    let (_, _, all) = get(&d, "/api/v1/serviceaccounts", Some(&tok));
    let full = fixture("serviceaccounts-list.json");
    assert_eq!(keys(&all["metadata"]), keys(&full["metadata"]));
    assert_eq!(all["items"].as_array().unwrap().len(), 5);
    // Label selector and namespace.
    let (_, _, sel) = get(
        &d,
        "/api/v1/namespaces/shop/serviceaccounts?labelSelector=app.kubernetes.io%2Fname%3Dorders-api",
        Some(&tok),
    );
    let items = sel["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{sel}");
    assert_eq!(items[0]["metadata"]["name"], "orders-api");
}

#[test]
fn continue_with_resource_version_is_400_and_expired_continue_is_410() {
    let d = K8sDouble::start(DoubleOptions::default()).unwrap();
    seed(&d);
    let tok = d.token();
    let (_, _, p1) = get(&d, "/api/v1/serviceaccounts?limit=2", Some(&tok));
    let c = p1["metadata"]["continue"].as_str().unwrap().to_string();
    let (code, _, st) = get(
        &d,
        &format!("/api/v1/serviceaccounts?limit=2&continue={c}&resourceVersion=5"),
        Some(&tok),
    );
    assert_eq!(code, 400);
    assert_eq!(st["reason"], "BadRequest");
    d.expire_continue_tokens();
    let (code, _, st) = get(
        &d,
        &format!("/api/v1/serviceaccounts?limit=2&continue={c}"),
        Some(&tok),
    );
    assert_eq!(code, 410);
    let fx = fixture("status-410-list-expired.json");
    assert_eq!(keys(&st), keys(&fx));
    assert_eq!(st["reason"], fx["reason"]);
    assert_eq!(st["code"], fx["code"]);
}

#[test]
fn status_bodies_match_the_fixtures_exactly() {
    let d = K8sDouble::start(DoubleOptions::default()).unwrap();
    seed(&d);
    let tok = d.token();
    let (code, _, st) = get(
        &d,
        "/api/v1/namespaces/shop/serviceaccounts/ghost",
        Some(&tok),
    );
    assert_eq!(code, 404);
    assert_eq!(st, fixture("status-404-notfound.json"));
    let (code, _, st) = get(&d, "/api/v1/serviceaccounts", Some("wrong"));
    assert_eq!(code, 401);
    assert_eq!(st, fixture("status-401-unauthorized.json"));
    d.set_forbidden(true);
    let (code, _, st) = get(&d, "/api/v1/serviceaccounts", Some(&tok));
    assert_eq!(code, 403);
    assert_eq!(st, fixture("status-403-forbidden.json"));
    d.set_forbidden(false);
    // No token at all: anonymous, 403 (not 401) like a real apiserver.
    let (code, _, st) = get(&d, "/api/v1/serviceaccounts", None);
    assert_eq!(code, 403);
    assert!(
        st["message"].as_str().unwrap().contains("system:anonymous"),
        "{st}"
    );
    // A GET of an existing account has the fixture's shape (with kind/apiVersion).
    let (code, _, sa) = get(
        &d,
        "/api/v1/namespaces/shop/serviceaccounts/orders-api",
        Some(&tok),
    );
    assert_eq!(code, 200);
    let fx = fixture("serviceaccount-get.json");
    assert_eq!(sa["kind"], fx["kind"]);
    assert_eq!(sa["metadata"]["uid"], fx["metadata"]["uid"]);
    assert_eq!(sa["metadata"]["labels"], fx["metadata"]["labels"]);
    assert_eq!(
        sa["metadata"]["annotations"]["nats.example.io/publish"],
        fx["metadata"]["annotations"]["nats.example.io/publish"]
    );
    // Token rotation: accept only the new one.
    d.rotate_token("second", false);
    assert_eq!(get(&d, "/api/v1/serviceaccounts", Some(&tok)).0, 401);
    assert_eq!(get(&d, "/api/v1/serviceaccounts", Some("second")).0, 200);
    d.rotate_token("third", true);
    assert_eq!(get(&d, "/api/v1/serviceaccounts", Some("second")).0, 200);
    assert_eq!(get(&d, "/api/v1/serviceaccounts", Some("third")).0, 200);
}

/// A raw watch: reads the chunked stream and returns decoded events until `n` events or EOF.
struct RawWatch {
    r: BufReader<TcpStream>,
}

impl RawWatch {
    fn open(d: &K8sDouble, query: &str) -> (u16, String, RawWatch) {
        let mut s = TcpStream::connect(d.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /api/v1/serviceaccounts?{query} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            d.token()
        )
        .unwrap();
        let mut r = BufReader::new(s);
        let mut head = String::new();
        loop {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            if l == "\r\n" || l.is_empty() {
                break;
            }
            head.push_str(&l);
        }
        let code = head[9..12].parse().unwrap();
        (code, head, RawWatch { r })
    }

    /// Next chunk's payload; `None` at the terminating chunk or EOF.
    fn chunk(&mut self) -> Option<Vec<u8>> {
        let mut l = String::new();
        if self.r.read_line(&mut l).ok()? == 0 {
            return None;
        }
        let n = usize::from_str_radix(l.trim(), 16).ok()?;
        if n == 0 {
            return None;
        }
        let mut buf = vec![0; n + 2];
        self.r.read_exact(&mut buf).ok()?;
        buf.truncate(n);
        Some(buf)
    }

    fn event(&mut self) -> Option<Value> {
        let c = self.chunk()?;
        assert_eq!(c.last(), Some(&b'\n'), "each event ends with a newline");
        Some(serde_json::from_slice(&c).unwrap())
    }
}

#[test]
fn watch_streams_events_bookmarks_and_ends_cleanly() {
    let d = K8sDouble::start(DoubleOptions {
        bookmark_period: Some(Duration::from_millis(300)),
        ..DoubleOptions::default()
    })
    .unwrap();
    seed(&d);
    let rv = d.resource_version();
    let (code, head, mut w) = RawWatch::open(
        &d,
        &format!("watch=1&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=2"),
    );
    assert_eq!(code, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let fx = ndjson("watch-stream.ndjson");
    d.create_sa("shop", "reporter", &[]);
    d.set_annotations(
        "shop",
        "orders-api",
        &[("nats.example.io/publish", "orders.>, audit.orders")],
    );
    d.delete_sa("billing", "invoicer");
    let mut seen = Vec::new();
    let mut bookmark = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Some(ev) = w.event() {
        assert!(Instant::now() < deadline);
        if ev["type"] == "BOOKMARK" {
            bookmark.get_or_insert(ev);
        } else {
            seen.push(ev);
        }
    }
    let types: Vec<&str> = seen.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["ADDED", "MODIFIED", "DELETED"]);
    let by_type = |t: &str| fx.iter().find(|e| e["type"] == t).unwrap();
    for ev in &seen {
        let f = by_type(ev["type"].as_str().unwrap());
        assert_eq!(keys(ev), keys(f));
        assert_eq!(ev["object"]["kind"], "ServiceAccount");
        assert_eq!(ev["object"]["apiVersion"], "v1");
        let rv_ev: u64 = ev["object"]["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(rv_ev > rv);
    }
    assert_eq!(
        seen[2]["object"]["metadata"]["name"], "invoicer",
        "DELETED carries the last state"
    );
    assert_eq!(
        seen[2]["object"]["metadata"]["annotations"]["nats.example.io/publish"],
        "billing.>"
    );
    let bm = bookmark.expect("a bookmark within 2 s with a 300 ms period");
    let fbm = by_type("BOOKMARK");
    assert_eq!(keys(&bm["object"]), keys(&fbm["object"]));
    assert_eq!(
        keys(&bm["object"]["metadata"]),
        keys(&fbm["object"]["metadata"])
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.open_watches() != 0 {
        assert!(
            Instant::now() < deadline,
            "the watch ended but is still counted"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn watch_from_compacted_history_gets_an_error_410_event_and_faults_inject() {
    let d = K8sDouble::start(DoubleOptions::default()).unwrap();
    seed(&d);
    let old = d.resource_version() - 2;
    d.compact_history();
    let (code, _, mut w) = RawWatch::open(&d, &format!("watch=1&resourceVersion={old}"));
    assert_eq!(
        code, 200,
        "the error comes as a 200 stream with one ERROR event"
    );
    let ev = w.event().unwrap();
    let fx = &ndjson("watch-410.ndjson")[0];
    assert_eq!(keys(&ev), keys(fx));
    assert_eq!(keys(&ev["object"]), keys(&fx["object"]));
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");
    assert!(ev["object"]["message"]
        .as_str()
        .unwrap()
        .starts_with("too old resource version: "));
    assert!(w.event().is_none());

    let cur = d.resource_version();
    d.inject(Target::Watch, Fault::Http504TooLarge);
    let (code, _, _) = RawWatch::open(&d, &format!("watch=1&resourceVersion={cur}"));
    assert_eq!(code, 504);
    d.inject(Target::Watch, Fault::Http410);
    assert_eq!(
        RawWatch::open(&d, &format!("watch=1&resourceVersion={cur}")).0,
        410
    );
    // A watch from an RV newer than the server's is 504 TooLarge too.
    assert_eq!(
        RawWatch::open(&d, &format!("watch=1&resourceVersion={}", cur + 50)).0,
        504
    );
}

#[test]
fn cut_watches_mid_event_leaves_partial_json() {
    let d = K8sDouble::start(DoubleOptions::default()).unwrap();
    seed(&d);
    let rv = d.resource_version();
    let (_, _, mut w) = RawWatch::open(&d, &format!("watch=1&resourceVersion={rv}"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.open_watches() == 0 {
        assert!(Instant::now() < deadline, "watch never registered");
        std::thread::sleep(Duration::from_millis(10));
    }
    d.cut_watches(true);
    let mut rest = Vec::new();
    let _ = w.r.read_to_end(&mut rest);
    let text = String::from_utf8_lossy(&rest);
    assert!(text.contains("{\"type\":\"MODIFIED\""), "{text}");
    assert!(serde_json::from_str::<Value>(text.split("\r\n").nth(1).unwrap_or("")).is_err());
    assert!(!text.ends_with("0\r\n\r\n"), "no terminating chunk");
}

#[test]
fn jwks_discovery_and_token_request() {
    let d = K8sDouble::start(DoubleOptions::default()).unwrap();
    seed(&d);
    assert_eq!(d.kid(), "JHJehTTTZlsspKHT-GaJxK7Kd1NQgZJu3fyK6K_QDYU");
    let ag = agent();
    let mut r = ag
        .get(format!("{}/openid/v1/jwks", d.url()))
        .header("Accept", "application/jwk-set+json")
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/jwk-set+json");
    assert_eq!(r.headers()["cache-control"], "public, max-age=3600");
    let jwks: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    let vec_jwks: Value = serde_json::from_slice(
        &std::fs::read(vectors::dir().join("k8s-testkeys/jwks.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        jwks["keys"][0], vec_jwks["keys"][0],
        "same RSA JWK as the vectors"
    );
    let r = ag
        .get(format!("{}/openid/v1/jwks", d.url()))
        .header("Accept", "application/json")
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 406);
    let mut r = ag
        .get(format!("{}/.well-known/openid-configuration", d.url()))
        .call()
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/json");
    let disc: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    let vdisc: Value = serde_json::from_slice(
        &std::fs::read(vectors::dir().join("k8s-testkeys/openid-configuration.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(keys(&disc), keys(&vdisc));
    assert_eq!(disc["issuer"], vdisc["issuer"]);

    // TokenRequest.
    let post = |secs: u64| {
        let body = format!(
            r#"{{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{{"audiences":["nats"],"expirationSeconds":{secs},"boundObjectRef":{{"kind":"Pod","apiVersion":"v1","name":"orders-api-1","uid":"0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"}}}}}}"#
        );
        let mut r = ag
            .post(format!(
                "{}/api/v1/namespaces/shop/serviceaccounts/orders-api/token",
                d.url()
            ))
            .header("Authorization", format!("Bearer {}", d.token()))
            .header("Content-Type", "application/json")
            .send(body.as_bytes())
            .unwrap();
        let code = r.status().as_u16();
        (
            code,
            serde_json::from_str::<Value>(&r.body_mut().read_to_string().unwrap()).unwrap(),
        )
    };
    let (code, st) = post(60);
    assert_eq!(code, 422, "{st}");
    assert_eq!(st["reason"], "Invalid");
    d.set_min_token_seconds(10);
    let (code, tr) = post(60);
    assert_eq!(code, 201, "{tr}");
    let token = tr["status"]["token"].as_str().unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let dec = |s: &str| data_encoding::BASE64URL_NOPAD.decode(s.as_bytes()).unwrap();
    assert_eq!(
        String::from_utf8(dec(parts[0])).unwrap(),
        r#"{"alg":"RS256","kid":"JHJehTTTZlsspKHT-GaJxK7Kd1NQgZJu3fyK6K_QDYU"}"#
    );
    let payload = String::from_utf8(dec(parts[1])).unwrap();
    let claims: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(claims["aud"], serde_json::json!(["nats"]));
    assert_eq!(claims["sub"], "system:serviceaccount:shop:orders-api");
    assert_eq!(
        claims["kubernetes.io"]["serviceaccount"]["uid"],
        "6c0a5d1e-3f2b-4c8e-9a7d-1b2c3d4e5f60"
    );
    assert_eq!(claims["kubernetes.io"]["pod"]["name"], "orders-api-1");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        60
    );
    let order: Vec<usize> = [
        "\"aud\"",
        "\"exp\"",
        "\"iat\"",
        "\"iss\"",
        "\"jti\"",
        "\"kubernetes.io\"",
        "\"nbf\"",
        "\"sub\"",
    ]
    .iter()
    .map(|k| payload.find(k).unwrap())
    .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "claims sorted: {payload}"
    );
    // The signature verifies with the published key, and not after tampering.
    let n = dec(jwks["keys"][0]["n"].as_str().unwrap());
    let e = dec(jwks["keys"][0]["e"].as_str().unwrap());
    let key = ring::signature::RsaPublicKeyComponents { n: &n, e: &e };
    let input = format!("{}.{}", parts[0], parts[1]);
    key.verify(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        input.as_bytes(),
        &dec(parts[2]),
    )
    .unwrap();
    let tampered = format!("{}.{}x", parts[0], parts[1]);
    assert!(key
        .verify(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            tampered.as_bytes(),
            &dec(parts[2])
        )
        .is_err());
    // In-process minting gives the same layout.
    let t2 = d.mint_token("shop", "orders-api", &["nats"], 4102444800);
    let c2: Value = serde_json::from_slice(&dec(t2.split('.').nth(1).unwrap())).unwrap();
    assert_eq!(c2["exp"], 4102444800u64);
    assert_eq!(
        c2["kubernetes.io"]["serviceaccount"]["uid"],
        "6c0a5d1e-3f2b-4c8e-9a7d-1b2c3d4e5f60"
    );
}

#[test]
fn tls_with_the_test_ca_and_down_then_back_on_the_same_port() {
    let d = K8sDouble::start(DoubleOptions {
        tls: true,
        ..DoubleOptions::default()
    })
    .unwrap();
    assert!(d.url().starts_with("https://127.0.0.1:"));
    let dir = std::env::temp_dir().join(format!("k8sdouble-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, d.ca_pem()).unwrap();
    let good = nats_k8s_callout::httpclient::agent(&nats_k8s_callout::httpclient::HttpSettings {
        ca_file: Some(ca),
        total_timeout: Some(Duration::from_secs(5)),
        ..Default::default()
    })
    .unwrap();
    let call = |a: &ureq::Agent| {
        a.get(format!("{}/api/v1/serviceaccounts", d.url()))
            .header("Authorization", format!("Bearer {}", d.token()))
            .call()
    };
    assert_eq!(call(&good).unwrap().status().as_u16(), 200);
    let web_roots = nats_k8s_callout::httpclient::agent(&Default::default()).unwrap();
    assert!(
        call(&web_roots).is_err(),
        "the test CA is not a public root"
    );
    d.go_down();
    assert!(call(&good).is_err(), "refused while down");
    d.come_back().unwrap();
    assert_eq!(call(&good).unwrap().status().as_u16(), 200);
    std::fs::remove_dir_all(dir).ok();
}
