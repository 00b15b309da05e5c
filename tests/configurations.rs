//! End-to-end checks of configurations the other end-to-end tests do not cover: a real
//! nats-server, the Kubernetes API double, the service (`App`, configured through its
//! environment variables) and async-nats clients.
//!
//! Covered: NATS over TLS with client certificates; the API double over TLS with
//! `K8S_CA_FILE` and `JWKS_URL` on it; `JWKS_FILE` with two issuers; `K8S_NAMESPACE` and
//! `K8S_LABEL_SELECTOR` (ServiceAccounts outside them are refused); an nkey service login with a
//! dead first `NATS_URL`; `SA_ANNOTATION_PREFIX`, `ALLOW_RESPONSES=0` and `MAX_SESSION`
//! capping a longer token; a token larger than nats-server's default control line.
//!
//! As in `tests/e2e.rs`, a refused login is proven by the connect error and the denial reason
//! in the nats-server log, a refused publish by the server's `Permissions Violation`.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::ConnectOptions;
use futures_util::StreamExt;
mod common;
use common::{assert_refused, connect, connect_with, Client, WAIT};

use nats_k8s_callout::app::App;
use nats_k8s_callout::clock::unix_now;
use nats_k8s_callout::config::Config;
use nats_k8s_callout::testkit::k8s_double::{DoubleOptions, K8sDouble, MintSpec, ServiceAccount};
use nats_k8s_callout::testkit::nats_server::{
    configs, free_port, quote, tls_fixtures_dir, CalloutServerConfig, NatsServer,
};
use nats_k8s_callout::testkit::TempDir;

const AUTH_PASSWORD: &str = "configurations-auth-password";

// ---------------------------------------------------------------------------------------------
// The world

struct World {
    double: K8sDouble,
    server: NatsServer,
    app: Option<App>,
    _dir: TempDir,
}

/// What a test changes from the plain config-mode setup.
#[derive(Default)]
struct Setup {
    double: Option<DoubleOptions>,
    /// Extra nats-server configuration text.
    server_extra: String,
    /// Replaces the callout server configuration (then the test sets the service login).
    server_conf: Option<String>,
    env: Vec<(String, String)>,
    /// Signing key when `server_conf` is given (its public key must be the issuer there).
    issuer_key: Option<nkeys::KeyPair>,
    /// Prepended to `NATS_URL` (comma-separated).
    url_prefix: Option<String>,
    /// Encrypted callout requests (config mode only).
    xkey: bool,
}

impl Setup {
    fn env(mut self, k: &str, v: impl Into<String>) -> Self {
        self.env.push((k.to_string(), v.into()));
        self
    }
}

impl World {
    async fn start(setup: Setup) -> World {
        let double = K8sDouble::start(setup.double.unwrap_or_default()).unwrap();
        let dir = TempDir::new("configurations");
        let api_token = dir.write("api-token", &double.token());
        let mut env: HashMap<String, String> = HashMap::from([
            ("JWT_ISSUER".into(), double.issuer().to_string()),
            (
                "JWKS_URL".into(),
                format!("{}/openid/v1/jwks", double.url()),
            ),
            ("K8S_API_URL".into(), double.url()),
            ("K8S_TOKEN_FILE".into(), api_token),
            ("HTTP_ADDR".into(), "127.0.0.1:0".into()),
            ("NATS_ACCOUNT".into(), "APP".into()),
        ]);
        let account = setup.issuer_key.unwrap_or_else(nkeys::KeyPair::new_account);
        env.insert(
            "NATS_SIGNING_KEY_FILE".into(),
            dir.write("issuer.seed", &account.seed().unwrap()),
        );
        let conf = match setup.server_conf {
            Some(c) => c,
            None => {
                env.insert("NATS_USER".into(), "auth".into());
                env.insert("NATS_PASSWORD".into(), AUTH_PASSWORD.into());
                let mut conf = CalloutServerConfig::new(account.public_key(), AUTH_PASSWORD);
                if setup.xkey {
                    let x = nkeys::XKey::new();
                    let f = dir.write("xkey.seed", &x.seed().unwrap());
                    env.insert("NATS_XKEY_SEED_FILE".into(), f);
                    conf = conf.xkey(x.public_key());
                }
                conf.render()
            }
        };
        let server = NatsServer::start(&format!("{conf}\n{}", setup.server_extra));
        let url = match setup.url_prefix {
            Some(p) => format!("{p},{}", server.url()),
            None => server.url(),
        };
        env.insert("NATS_URL".into(), url);
        for (k, v) in setup.env {
            // Placeholders for files only the world knows.
            let v = v.replace("{double_ca}", &dir.write("double-ca.pem", double.ca_pem()));
            let v = v.replace("{double_jwks}", &dir.write("jwks.json", double.jwks_json()));
            if v.is_empty() {
                env.remove(&k);
            } else {
                env.insert(k, v);
            }
        }
        let cfg = Config::from_env(&|k| env.get(k).cloned()).expect("valid config");
        let app = tokio::task::spawn_blocking(move || {
            let app = App::start(&cfg).expect("service starts");
            assert!(
                app.wait_ready(Duration::from_secs(10)),
                "not ready: {:?}",
                app.health().readiness()
            );
            app
        })
        .await
        .unwrap();
        World {
            double,
            server,
            app: Some(app),
            _dir: dir,
        }
    }

    fn token(&self, ns: &str, sa: &str) -> String {
        self.double.mint_token(ns, sa, &["nats"], unix_now() + 600)
    }

    async fn wait_cached(&self, ns: &str, sa: &str) {
        let cache = self.app.as_ref().unwrap().cache().clone();
        let deadline = tokio::time::Instant::now() + WAIT;
        while cache.get_cached(ns, sa).is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{ns}/{sa} not cached"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until nats-server logs the callout's denial with exactly `reason`.
    async fn expect_denial_logged(&self, reason: &str) {
        let needle = format!("returned an error: {reason}");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let log = self.server.log();
            if log.lines().any(|l| l.trim_end().ends_with(&needle)) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "reason {reason:?} not in the nats-server log:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn shutdown(mut self) {
        let app = self.app.take().unwrap();
        tokio::task::spawn_blocking(move || assert!(app.shutdown(WAIT)))
            .await
            .unwrap();
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown(Duration::from_secs(2));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

/// `a` publishes on `subject` and the server refuses it.
async fn assert_publish_refused(a: &mut Client, subject: &str) {
    a.nc.publish(subject.to_string(), "x".into()).await.unwrap();
    a.nc.flush().await.unwrap();
    a.expect_violation("Publish", subject).await;
}

fn fixture(name: &str) -> String {
    tls_fixtures_dir().join(name).display().to_string()
}

// ---------------------------------------------------------------------------------------------
// TLS

/// The service reaches a nats-server that requires client certificates, trusting only the
/// test CA; clients connect over TLS too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_over_tls_with_client_certificates() {
    let w = World::start(
        Setup {
            server_extra: configs::tls(true),
            ..Setup::default()
        }
        .env("NATS_TLS_CA_FILE", fixture("ca.pem"))
        .env("NATS_TLS_CERT_FILE", fixture("client.pem"))
        .env("NATS_TLS_KEY_FILE", fixture("client-key.pem")),
    )
    .await;
    w.double.create_sa("shop", "orders-api", &[]);
    w.wait_cached("shop", "orders-api").await;
    let tls = |o: ConnectOptions| {
        o.require_tls(true)
            .add_root_certificates(fixture("ca.pem").into())
            .add_client_certificate(
                fixture("client.pem").into(),
                fixture("client-key.pem").into(),
            )
    };
    let c = connect_with(&w.server.url(), &w.token("shop", "orders-api"), tls)
        .await
        .unwrap_or_else(|e| panic!("admitted over TLS ({e}); log:\n{}", w.server.log()));
    c.round_trip("shop.tls").await;
    w.shutdown().await;
}

/// The API double over https: `K8S_CA_FILE` is the only trust anchor for it, and the JWKS at
/// `JWKS_URL` on the same API server must be fetched with it (and our token) too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_over_tls_with_jwks_url_on_it() {
    let w = World::start(
        Setup {
            // As kube-apiserver by default: the JWKS only for authenticated callers.
            double: Some(DoubleOptions {
                tls: true,
                anonymous_discovery: false,
                ..DoubleOptions::default()
            }),
            ..Setup::default()
        }
        .env("K8S_CA_FILE", "{double_ca}"),
    )
    .await;
    assert!(w.double.url().starts_with("https://"));
    w.double.create_sa("shop", "orders-api", &[]);
    w.wait_cached("shop", "orders-api").await;
    let c = connect(&w.server.url(), &w.token("shop", "orders-api"))
        .await
        .expect("admitted");
    c.round_trip("shop.https").await;
    // An account the watch has not delivered: found by the lazy GET, over https too.
    w.double.seed([ServiceAccount {
        namespace: "shop".into(),
        name: "late".into(),
        uid: "0b5e1d2c-0000-4000-8000-000000000001".into(),
        resource_version: 0,
        labels: Default::default(),
        annotations: Default::default(),
        deleting: false,
    }]);
    assert!(w
        .app
        .as_ref()
        .unwrap()
        .cache()
        .get_cached("shop", "late")
        .is_none());
    connect(&w.server.url(), &w.token("shop", "late"))
        .await
        .expect("admitted after a lazy GET")
        .round_trip("shop.late")
        .await;
    w.shutdown().await;
}

/// Out of cluster without JWKS_URL: OIDC discovery from an issuer that is the API server
/// itself (https, private CA) uses `K8S_CA_FILE` and our token, as the API server does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_from_an_issuer_on_the_api_server() {
    let port = free_port();
    let w = World::start(
        Setup {
            double: Some(DoubleOptions {
                port,
                tls: true,
                anonymous_discovery: false,
                issuer: format!("https://127.0.0.1:{port}"),
                ..DoubleOptions::default()
            }),
            ..Setup::default()
        }
        .env("K8S_CA_FILE", "{double_ca}")
        .env("JWKS_URL", ""),
    )
    .await;
    w.double.create_sa("shop", "orders-api", &[]);
    w.wait_cached("shop", "orders-api").await;
    connect(&w.server.url(), &w.token("shop", "orders-api"))
        .await
        .expect("admitted")
        .round_trip("shop.discovered")
        .await;
    w.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Token sources

/// `JWKS_FILE` with two issuers: both are accepted, a third is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_file_with_two_issuers() {
    let (a, b) = ("https://issuer-a.example", "https://issuer-b.example");
    let w = World::start(
        Setup::default()
            .env("JWKS_URL", "")
            .env("JWKS_FILE", "{double_jwks}")
            .env("JWT_ISSUER", format!("{a},{b}")),
    )
    .await;
    w.double.create_sa("shop", "orders-api", &[]);
    w.wait_cached("shop", "orders-api").await;
    let mint = |iss: &str| {
        w.double.mint_token_with(&MintSpec {
            namespace: "shop".into(),
            name: "orders-api".into(),
            audiences: vec!["nats".into()],
            exp: unix_now() + 600,
            issuer: Some(iss.into()),
            ..MintSpec::default()
        })
    };
    for iss in [a, b] {
        connect(&w.server.url(), &mint(iss))
            .await
            .unwrap_or_else(|e| panic!("token of {iss} refused: {e}"))
            .round_trip("shop.x")
            .await;
    }
    assert_refused(
        &w.server.url(),
        &w.token("shop", "orders-api"),
        "third issuer",
    )
    .await;
    w.expect_denial_logged("issuer").await;
    w.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Which ServiceAccounts

/// `K8S_NAMESPACE=shop`: only shop's ServiceAccounts; a token of another namespace is refused
/// even though the API server would answer a GET for its ServiceAccount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_restriction_refuses_other_namespaces() {
    let w = World::start(Setup::default().env("K8S_NAMESPACE", "shop")).await;
    w.double.create_sa("shop", "orders-api", &[]);
    w.double.create_sa("billing", "invoices", &[]);
    w.wait_cached("shop", "orders-api").await;
    let url = w.server.url();
    connect(&url, &w.token("shop", "orders-api"))
        .await
        .expect("shop admitted")
        .round_trip("shop.x")
        .await;
    assert_refused(&url, &w.token("billing", "invoices"), "other namespace").await;
    w.expect_denial_logged("sa_not_found").await;
    w.shutdown().await;
}

/// `K8S_LABEL_SELECTOR`: a ServiceAccount without the label is refused, even when the API
/// server would answer a GET for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_selector_refuses_unselected_accounts() {
    let w = World::start(Setup::default().env("K8S_LABEL_SELECTOR", "nats=enabled")).await;
    w.double
        .create_sa_full("shop", "selected", None, &[("nats", "enabled")], &[]);
    w.double
        .create_sa_full("shop", "other", None, &[("nats", "disabled")], &[]);
    w.wait_cached("shop", "selected").await;
    let url = w.server.url();
    connect(&url, &w.token("shop", "selected"))
        .await
        .expect("selected admitted")
        .round_trip("shop.x")
        .await;
    assert_refused(&url, &w.token("shop", "other"), "unselected account").await;
    w.expect_denial_logged("sa_not_found").await;
    w.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Service login and URLs

/// The service logs in with an nkey seed; the first NATS_URL is dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey_login_with_a_dead_first_url() {
    let user = nkeys::KeyPair::new_user();
    let account = nkeys::KeyPair::new_account();
    let conf = format!(
        "accounts {{\n  AUTH {{ users: [ {{ nkey: {u} }} ] }}\n  APP {{}}\n  SYS {{}}\n}}\nsystem_account: SYS\nauthorization {{\n  timeout: 2\n  auth_callout {{\n    issuer: {i}\n    account: AUTH\n    auth_users: [ {u} ]\n  }}\n}}\n",
        u = quote(&user.public_key()),
        i = quote(&account.public_key()),
    );
    let dir = TempDir::new("configurations-nkey");
    let seed = dir.write("user.seed", &user.seed().unwrap());
    let w = World::start(
        Setup {
            server_conf: Some(conf),
            issuer_key: Some(account),
            url_prefix: Some(format!("nats://127.0.0.1:{}", free_port())),
            ..Setup::default()
        }
        .env("NATS_NKEY_SEED_FILE", seed),
    )
    .await;
    w.double.create_sa("shop", "orders-api", &[]);
    w.wait_cached("shop", "orders-api").await;
    connect(&w.server.url(), &w.token("shop", "orders-api"))
        .await
        .expect("admitted")
        .round_trip("shop.x")
        .await;
    w.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Policy settings

/// `SA_ANNOTATION_PREFIX=example.com/` (only that prefix grants), `ALLOW_RESPONSES=0` (no reply
/// to a request's inbox) and `MAX_SESSION=3s` capping a token valid for 10 minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_settings_prefix_responses_and_max_session() {
    let w = World::start(
        Setup::default()
            .env("SA_ANNOTATION_PREFIX", "example.com/")
            .env("ALLOW_RESPONSES", "0")
            .env("MAX_SESSION", "3s"),
    )
    .await;
    w.double.create_sa(
        "shop",
        "orders-api",
        &[
            ("example.com/allowed-pub-subjects", "billing.get"),
            ("nats.io/allowed-pub-subjects", "billing.other"),
        ],
    );
    w.double.create_sa("billing", "invoices", &[]);
    w.wait_cached("shop", "orders-api").await;
    w.wait_cached("billing", "invoices").await;
    let url = w.server.url();
    let mut orders = connect_with(&url, &w.token("shop", "orders-api"), |o| {
        o.custom_inbox_prefix("_INBOX_shop_orders-api")
    })
    .await
    .expect("admitted");
    let connected_at = std::time::Instant::now();
    let mut billing = connect(&url, &w.token("billing", "invoices"))
        .await
        .unwrap();
    let mut requests = billing.nc.subscribe("billing.get").await.unwrap();
    billing.round_trip("billing.sync").await;

    // The custom prefix grants, the default one does not.
    orders
        .nc
        .publish_with_reply("billing.get", "_INBOX_shop_orders-api.r1", "q".into())
        .await
        .unwrap();
    assert_publish_refused(&mut orders, "billing.other").await;
    // ALLOW_RESPONSES=0: the responder may not answer into the requester's inbox.
    let req = tokio::time::timeout(WAIT, requests.next())
        .await
        .expect("request delivered")
        .unwrap();
    let reply = req.reply.expect("reply subject");
    assert_publish_refused(&mut billing, reply.as_str()).await;

    // MAX_SESSION=3s ends the session long before the token's exp.
    orders
        .expect_server_error("user authentication expired")
        .await;
    let lasted = connected_at.elapsed();
    assert!(
        lasted >= Duration::from_secs(2) && lasted <= Duration::from_secs(9),
        "session lasted {lasted:?}"
    );
    w.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Large tokens

/// A token of about 12 KiB (beyond nats-server's default 4 KiB control line; the server is
/// configured for 32 KiB) is admitted through encrypted (xkey) callout requests; one above our
/// 16 KiB limit is refused as malformed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_tokens_near_the_control_line_limit() {
    let w = World::start(Setup {
        server_extra: "max_control_line: 32768\n".into(),
        xkey: true,
        ..Setup::default()
    })
    .await;
    w.double.create_sa("shop", "orders-api", &[]);
    w.wait_cached("shop", "orders-api").await;
    let mint = |extra_audiences: usize| {
        let mut audiences = vec!["nats".to_string()];
        audiences.extend((0..extra_audiences).map(|i| format!("https://audience-{i:04}.example")));
        w.double.mint_token_with(&MintSpec {
            namespace: "shop".into(),
            name: "orders-api".into(),
            audiences,
            exp: unix_now() + 600,
            ..MintSpec::default()
        })
    };
    let big = mint(300);
    assert!((10_000..16_000).contains(&big.len()), "{}", big.len());
    connect(&w.server.url(), &big)
        .await
        .unwrap_or_else(|e| panic!("large token refused: {e}; log:\n{}", w.server.log()))
        .round_trip("shop.big")
        .await;
    let too_big = mint(450);
    assert!(
        (16_500..30_000).contains(&too_big.len()),
        "{}",
        too_big.len()
    );
    assert_refused(&w.server.url(), &too_big, "token above 16 KiB").await;
    w.expect_denial_logged("malformed").await;
    w.shutdown().await;
}
