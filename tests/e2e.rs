//! End-to-end tests: a real nats-server (config mode and operator mode), the Kubernetes API
//! double, the service (`App`, configured through its environment variables) and an
//! independent client (async-nats) logging in with minted ServiceAccount tokens.
//!
//! Every step of the local demo is here, plus request/reply across namespaces with private
//! inboxes, a second reply refused, a session ending at the token's expiry and readmission with
//! a fresh token, operator mode and encrypted (xkey) callout requests.
//!
//! Negative checks never rely on timing alone (build-notes "Test-client pitfalls"): a refused
//! publish or subscription is proven by the server's `Permissions Violation` reaching the
//! client (waited for with a deadline), and "nothing arrived" is checked only after a
//! round trip on the receiving connection. A refused login is proven by the connect error and
//! by the denial reason in the nats-server log (the callout's error string).

use std::collections::HashMap;
use std::time::Duration;

use async_nats::{ConnectOptions, Event};
use futures_util::StreamExt;
use tokio::sync::mpsc;
mod common;
use common::{assert_delivered, assert_refused, barrier, connect, connect_inbox, Client, WAIT};

use nats_k8s_callout::app::App;
use nats_k8s_callout::clock::unix_now;
use nats_k8s_callout::config::Config;
use nats_k8s_callout::testkit::k8s_double::{DoubleOptions, K8sDouble, MintSpec};
use nats_k8s_callout::testkit::nats_server::{CalloutServerConfig, NatsServer};
use nats_k8s_callout::testkit::operator::{OperatorOptions, OperatorSetup};
use nats_k8s_callout::testkit::TempDir;

const AUTH_PASSWORD: &str = "e2e-auth-password";

// ---------------------------------------------------------------------------------------------
// The world: double + nats-server + service

enum Mode {
    Config { xkey: bool },
    Operator { xkey: bool, signing_keys: bool },
}

struct World {
    double: K8sDouble,
    server: NatsServer,
    app: Option<App>,
    dir: TempDir,
}

impl World {
    async fn start(mode: Mode) -> World {
        Self::start_with(mode, &[]).await
    }

    async fn start_with(mode: Mode, extra_env: &[(&str, &str)]) -> World {
        let double = K8sDouble::start(DoubleOptions::default()).unwrap();
        let dir = TempDir::new("e2e-world");
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
        ]);
        let server = match mode {
            Mode::Config { xkey } => {
                let account = nkeys::KeyPair::new_account();
                let seed = dir.write("issuer.seed", &account.seed().unwrap());
                let mut conf = CalloutServerConfig::new(account.public_key(), AUTH_PASSWORD);
                if xkey {
                    let x = nkeys::XKey::new();
                    let f = dir.write("xkey.seed", &x.seed().unwrap());
                    env.insert("NATS_XKEY_SEED_FILE".into(), f);
                    conf = conf.xkey(x.public_key());
                }
                env.insert("NATS_USER".into(), "auth".into());
                env.insert("NATS_PASSWORD".into(), AUTH_PASSWORD.into());
                env.insert("NATS_SIGNING_KEY_FILE".into(), seed);
                env.insert("NATS_ACCOUNT".into(), "APP".into());
                NatsServer::start(&conf.render())
            }
            Mode::Operator { xkey, signing_keys } => {
                let setup = OperatorSetup::generate(OperatorOptions { xkey, signing_keys });
                let creds = dir.write("service.creds", &setup.service_creds);
                // With signing keys, the app account's signing key issues the users and the
                // callout account's signing key signs the responses.
                let app_signer = setup.app_signing_key.as_ref().unwrap_or(&setup.app_account);
                let callout_signer = setup
                    .callout_signing_key
                    .as_ref()
                    .unwrap_or(&setup.callout_account);
                let app_seed = dir.write("app.seed", &app_signer.seed().unwrap());
                let callout_seed = dir.write("callout.seed", &callout_signer.seed().unwrap());
                env.insert("NATS_CREDS_FILE".into(), creds);
                env.insert("NATS_SIGNING_KEY_FILE".into(), app_seed);
                env.insert("NATS_RESPONSE_SIGNING_KEY_FILE".into(), callout_seed);
                env.insert("NATS_ACCOUNT".into(), setup.app_account.public_key());
                if let Some(x) = &setup.xkey {
                    let f = dir.write("xkey.seed", &x.seed().unwrap());
                    env.insert("NATS_XKEY_SEED_FILE".into(), f);
                }
                NatsServer::start(&setup.server_config(""))
            }
        };
        env.insert("NATS_URL".into(), server.url());
        for (k, v) in extra_env {
            env.insert(k.to_string(), v.to_string());
        }
        let cfg = Config::from_env(&|k| env.get(k).cloned()).expect("valid config");
        let app = tokio::task::spawn_blocking(move || {
            let app = App::start(&cfg).expect("service starts");
            assert!(
                app.wait_ready(Duration::from_secs(15)),
                "ready: {:?}",
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
            dir,
        }
    }

    fn url(&self) -> String {
        self.server.url()
    }

    /// A token for `ns/sa` (audience `nats`) valid for `secs` more seconds.
    fn token(&self, ns: &str, sa: &str, secs: u64) -> String {
        self.double.mint_token(ns, sa, &["nats"], unix_now() + secs)
    }

    /// Waits until the nats-server log names `reason` as the callout's error string
    /// (`Auth callout service returned an error: <reason>`).
    async fn expect_denial_logged(&self, reason: &str) {
        let end = tokio::time::Instant::now() + WAIT;
        loop {
            let log = self.server.log();
            if self.denials_logged(reason) > 0 {
                return;
            }
            if tokio::time::Instant::now() > end {
                panic!("reason {reason:?} not in the nats-server log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How many denials with exactly `reason` the nats-server logged.
    fn denials_logged(&self, reason: &str) -> usize {
        let needle = format!("returned an error: {reason}");
        self.server
            .log()
            .lines()
            .filter(|l| l.trim_end().ends_with(&needle))
            .count()
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

/// `publisher` publishes on `subject`: the server refuses it and `watcher` (who may subscribe
/// to it) receives nothing.
async fn assert_publish_refused(publisher: &mut Client, watcher: &Client, subject: &str) {
    let mut sub = watcher.nc.subscribe(subject.to_string()).await.unwrap();
    barrier(watcher).await;
    publisher
        .nc
        .publish(subject.to_string(), "forbidden".into())
        .await
        .unwrap();
    publisher.nc.flush().await.unwrap();
    publisher.expect_violation("Publish", subject).await;
    barrier(watcher).await;
    assert!(
        futures_util::FutureExt::now_or_never(sub.next()).is_none(),
        "a refused publish on {subject} was delivered"
    );
}

// ---------------------------------------------------------------------------------------------
// The demo's steps

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_steps_end_to_end() {
    let w = World::start(Mode::Config { xkey: false }).await;
    w.double.create_sa("shop", "orders-api", &[]);
    w.double.create_sa(
        "shop",
        "reporting",
        &[
            ("nats.io/allowed-pub-subjects", "billing.invoices.>"),
            ("nats.io/allowed-sub-subjects", "billing.events.*"),
        ],
    );
    w.double.create_sa("billing", "invoices", &[]);
    // The cache learns them by watch; wait until the service sees them all.
    let app = w.app.as_ref().unwrap();
    let cache = app.cache().clone();
    let deadline = std::time::Instant::now() + WAIT;
    while cache.get_cached("billing", "invoices").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "cache did not learn the accounts"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let url = w.url();
    let mut orders = connect(&url, &w.token("shop", "orders-api", 600))
        .await
        .expect("orders-api admitted");
    let billing = connect(&url, &w.token("billing", "invoices", 600))
        .await
        .expect("billing/invoices admitted");

    // 1. Own namespace: publish and subscribe.
    assert_delivered(&orders, &orders, "shop.orders.created").await;
    // 2. A foreign namespace's subject: publish and subscribe refused.
    assert_publish_refused(&mut orders, &billing, "billing.invoices.new").await;
    let _s = orders.nc.subscribe("billing.events.paid").await.unwrap();
    orders
        .expect_violation("Subscription", "billing.events.paid")
        .await;
    // Guard rails: $SYS is not reachable.
    orders
        .nc
        .publish("$SYS.REQ.SERVER.PING", "x".into())
        .await
        .unwrap();
    orders.nc.flush().await.unwrap();
    orders
        .expect_violation("Publish", "$SYS.REQ.SERVER.PING")
        .await;

    // 3. Annotation grant: reporting may publish to billing.invoices.> and subscribe to
    //    billing.events.*, but still not billing.payroll.
    let mut reporting = connect(&url, &w.token("shop", "reporting", 600))
        .await
        .expect("reporting admitted");
    assert_delivered(&reporting, &billing, "billing.invoices.new").await;
    assert_delivered(&billing, &reporting, "billing.events.paid").await;
    reporting.assert_no_violation();
    assert_publish_refused(&mut reporting, &billing, "billing.payroll.run").await;

    // 4. An annotation edited live changes what a *new* connection gets.
    assert!(w.double.set_annotations(
        "shop",
        "orders-api",
        &[("nats.io/allowed-pub-subjects", "billing.invoices.>")]
    ));
    let deadline = std::time::Instant::now() + WAIT;
    while cache
        .get_cached("shop", "orders-api")
        .is_none_or(|r| r.annotation("nats.io/allowed-pub-subjects").is_none())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "cache did not see the edit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let orders2 = connect(&url, &w.token("shop", "orders-api", 600))
        .await
        .expect("orders-api admitted again");
    assert_delivered(&orders2, &billing, "billing.invoices.new").await;
    // ... while the old connection keeps the permissions it was admitted with.
    assert_publish_refused(&mut orders, &billing, "billing.invoices.new").await;

    // 5. A deleted ServiceAccount is refused; a re-created one (new uid) refuses old tokens.
    let old_token = w.token("shop", "orders-api", 600);
    assert!(w.double.delete_sa("shop", "orders-api"));
    let deadline = std::time::Instant::now() + WAIT;
    while cache.get_cached("shop", "orders-api").is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "cache did not see the delete"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_refused(&url, &old_token, "deleted ServiceAccount").await;
    w.expect_denial_logged("sa_not_found").await;
    let recreated = w.double.create_sa("shop", "orders-api", &[]);
    let deadline = std::time::Instant::now() + WAIT;
    while cache
        .get_cached("shop", "orders-api")
        .is_none_or(|r| r.uid != recreated.uid)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "cache did not see the re-create"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_refused(&url, &old_token, "token of the previous incarnation").await;
    w.expect_denial_logged("sa_uid_mismatch").await;
    connect(&url, &w.token("shop", "orders-api", 600))
        .await
        .expect("a token of the re-created account is admitted");

    // 6. An expired token is refused (beyond the leeway), and so is one within the leeway:
    //    the session would already be over.
    let expired = w
        .double
        .mint_token("shop", "reporting", &["nats"], unix_now() - 3600);
    assert_refused(&url, &expired, "expired token").await;
    w.expect_denial_logged("expired").await;
    let in_leeway = w
        .double
        .mint_token("shop", "reporting", &["nats"], unix_now() - 5);
    assert_refused(&url, &in_leeway, "token expired within the leeway").await;
    w.expect_denial_logged("session_expired").await;

    // Wrong audience, and no token at all.
    let wrong_aud = w
        .double
        .mint_token("shop", "reporting", &["kubernetes"], unix_now() + 600);
    assert_refused(&url, &wrong_aud, "token for another audience").await;
    w.expect_denial_logged("audience").await;
    let anonymous = ConnectOptions::new()
        .max_reconnects(Some(1))
        .connect(url.as_str())
        .await;
    assert!(anonymous.is_err(), "a client without a token is refused");
    w.expect_denial_logged("no_token").await;

    w.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Request/reply across namespaces with private inboxes

async fn wait_cached(w: &World, ns: &str, sa: &str) {
    let cache = w.app.as_ref().unwrap().cache().clone();
    let deadline = std::time::Instant::now() + WAIT;
    while cache.get_cached(ns, sa).is_none() {
        assert!(std::time::Instant::now() < deadline, "{ns}/{sa} not cached");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply_across_namespaces_with_private_inboxes() {
    let w = World::start(Mode::Config { xkey: false }).await;
    w.double.create_sa(
        "shop",
        "orders-api",
        &[("nats.io/allowed-pub-subjects", "billing.invoices.get")],
    );
    w.double.create_sa("billing", "invoices", &[]);
    wait_cached(&w, "shop", "orders-api").await;
    wait_cached(&w, "billing", "invoices").await;
    let url = w.url();

    let mut server = connect(&url, &w.token("billing", "invoices", 600))
        .await
        .unwrap();
    let mut requests = server.nc.subscribe("billing.invoices.get").await.unwrap();
    barrier(&server).await;

    // A uses its private inbox prefix.
    let client = connect_inbox(
        &url,
        &w.token("shop", "orders-api", 600),
        Some("_INBOX_shop_orders-api"),
    )
    .await
    .unwrap();
    let served = tokio::spawn(async move {
        let req = requests.next().await.unwrap();
        let reply = req.reply.clone().expect("request has a reply subject");
        assert!(
            reply.as_str().starts_with("_INBOX_shop_orders-api."),
            "reply subject {reply}"
        );
        server
            .nc
            .publish(reply.clone(), "invoice-42".into())
            .await
            .unwrap();
        // A second reply to the same request: allow_responses max 1.
        server
            .nc
            .publish(reply.clone(), "second".into())
            .await
            .unwrap();
        server.nc.flush().await.unwrap();
        server.expect_violation("Publish", reply.as_str()).await;
        server
    });
    let answer = tokio::time::timeout(WAIT, client.nc.request("billing.invoices.get", "42".into()))
        .await
        .expect("request answered in time")
        .expect("request answered");
    assert_eq!(&answer.payload[..], b"invoice-42");
    let server = served.await.unwrap();
    drop(server);

    // Explicitly: A's inbox subscription sees exactly one reply.
    let mut server = connect(&url, &w.token("billing", "invoices", 600))
        .await
        .unwrap();
    let mut requests = server.nc.subscribe("billing.invoices.get").await.unwrap();
    barrier(&server).await;
    let inbox = "_INBOX_shop_orders-api.manual";
    let mut replies = client.nc.subscribe(inbox.to_string()).await.unwrap();
    barrier(&client).await;
    client
        .nc
        .publish_with_reply("billing.invoices.get", inbox.to_string(), "1".into())
        .await
        .unwrap();
    let req = tokio::time::timeout(WAIT, requests.next())
        .await
        .unwrap()
        .unwrap();
    let reply = req.reply.unwrap();
    server
        .nc
        .publish(reply.clone(), "one".into())
        .await
        .unwrap();
    server
        .nc
        .publish(reply.clone(), "two".into())
        .await
        .unwrap();
    server.nc.flush().await.unwrap();
    server.expect_violation("Publish", inbox).await;
    let first = tokio::time::timeout(WAIT, replies.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&first.payload[..], b"one");
    barrier(&client).await;
    assert!(
        futures_util::FutureExt::now_or_never(replies.next()).is_none(),
        "a second reply was delivered"
    );
    // The server cannot publish to A's inbox unprompted.
    server
        .nc
        .publish(inbox.to_string(), "unprompted".into())
        .await
        .unwrap();
    server.nc.flush().await.unwrap();
    server.expect_violation("Publish", inbox).await;

    // Without the private prefix, the default `_INBOX.` subscription is refused.
    let mut shared = connect(&url, &w.token("shop", "orders-api", 600))
        .await
        .unwrap();
    let _r = shared.nc.request("billing.invoices.get", "x".into()).await;
    shared
        .expect_event("subscription to _INBOX. refused", WAIT, |e| {
            matches!(e, Event::ServerError(async_nats::ServerError::Other(m))
                if m.to_lowercase().contains("permissions violation for subscription to \"_inbox."))
        })
        .await;
    // Another ServiceAccount's private inbox is refused too.
    let _s = shared
        .nc
        .subscribe("_INBOX_billing_invoices.>")
        .await
        .unwrap();
    shared
        .expect_violation("Subscription", "_INBOX_billing_invoices.>")
        .await;
    w.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Session end at token expiry, readmission with a fresh token

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_ends_when_the_token_expires_and_a_fresh_token_readmits() {
    // The default leeway (60 s) must not lengthen the session.
    let w = World::start(Mode::Config { xkey: false }).await;
    w.double.create_sa("shop", "orders-api", &[]);
    wait_cached(&w, "shop", "orders-api").await;
    let token_file = w.dir.path().join("nats-token");
    let exp = unix_now() + 4;
    std::fs::write(
        &token_file,
        w.double.mint_token_with(&MintSpec {
            namespace: "shop".into(),
            name: "orders-api".into(),
            audiences: vec!["nats".into()],
            exp,
            ..MintSpec::default()
        }),
    )
    .unwrap();

    let (tx, mut events) = mpsc::unbounded_channel();
    let reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (file, r) = (token_file.clone(), reads.clone());
    let nc = ConnectOptions::with_auth_callback(move |_nonce| {
        let file = file.clone();
        let r = r.clone();
        async move {
            r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let token = tokio::fs::read_to_string(&file)
                .await
                .map_err(|e| async_nats::AuthError::new(e.kind().to_string()))?;
            let mut auth = async_nats::Auth::new();
            auth.token = Some(token.trim().to_string());
            Ok(auth)
        }
    })
    .event_callback(move |e| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(e);
        }
    })
    .custom_inbox_prefix("_INBOX_shop_orders-api")
    .reconnect_delay_callback(|_| Duration::from_millis(100))
    .connect(w.url())
    .await
    .expect("admitted with the short token");
    let connected_at = unix_now();
    assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), 1);

    // The kubelet rotates the projected token before expiry.
    std::fs::write(&token_file, w.token("shop", "orders-api", 600)).unwrap();

    let mut expired_at = None;
    let mut reconnected = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
    while !reconnected {
        let e = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("expiry and reconnect within 25 s")
            .unwrap();
        match e {
            Event::ServerError(async_nats::ServerError::Other(m))
                if m.to_lowercase().contains("user authentication expired") =>
            {
                expired_at = Some(unix_now());
            }
            Event::Connected if expired_at.is_some() => reconnected = true,
            _ => {}
        }
    }
    let expired_at = expired_at.unwrap();
    // Disconnected at the token's exp, not exp + leeway (60 s) nor the maximum session (1 h);
    // the upper bound is generous for a loaded machine.
    assert!(
        expired_at >= exp.saturating_sub(1) && expired_at <= exp + 10,
        "expired at {expired_at}, token exp {exp}, connected at {connected_at}"
    );
    assert!(
        reads.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "token file re-read"
    );
    // Readmitted with the fresh token: the session works.
    let mut sub = nc.subscribe("shop.after").await.unwrap();
    nc.publish("shop.after", "ok".into()).await.unwrap();
    let m = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"ok");
    drop(nc);
    w.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Operator mode and xkey

async fn basic_admission(w: &World) {
    w.double.create_sa("shop", "orders-api", &[]);
    w.double.create_sa("billing", "invoices", &[]);
    wait_cached(w, "shop", "orders-api").await;
    wait_cached(w, "billing", "invoices").await;
    let url = w.url();
    let mut orders = connect(&url, &w.token("shop", "orders-api", 600))
        .await
        .unwrap_or_else(|e| panic!("not admitted ({e}); nats-server log:\n{}", w.server.log()));
    let billing = connect(&url, &w.token("billing", "invoices", 600))
        .await
        .expect("admitted");
    assert_delivered(&orders, &orders, "shop.x").await;
    assert_publish_refused(&mut orders, &billing, "billing.x").await;
    let other_aud = w
        .double
        .mint_token("shop", "orders-api", &["vault"], unix_now() + 600);
    assert_refused(&url, &other_aud, "wrong audience").await;
    w.expect_denial_logged("audience").await;
    assert_eq!(w.denials_logged("audience"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_mode_with_xkey() {
    let w = World::start(Mode::Config { xkey: true }).await;
    basic_admission(&w).await;
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_mode() {
    let w = World::start(Mode::Operator {
        xkey: false,
        signing_keys: false,
    })
    .await;
    basic_admission(&w).await;
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_mode_with_xkey() {
    let w = World::start(Mode::Operator {
        xkey: true,
        signing_keys: false,
    })
    .await;
    basic_admission(&w).await;
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_mode_with_account_signing_keys() {
    let w = World::start(Mode::Operator {
        xkey: true,
        signing_keys: true,
    })
    .await;
    basic_admission(&w).await;
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_inbox_policy_grants_the_shared_inbox() {
    let w = World::start_with(Mode::Config { xkey: false }, &[("INBOX_POLICY", "shared")]).await;
    w.double.create_sa(
        "shop",
        "legacy",
        &[("nats.io/allowed-pub-subjects", "billing.invoices.get")],
    );
    w.double.create_sa("billing", "invoices", &[]);
    wait_cached(&w, "shop", "legacy").await;
    wait_cached(&w, "billing", "invoices").await;
    let url = w.url();
    let server = connect(&url, &w.token("billing", "invoices", 600))
        .await
        .unwrap();
    let mut requests = server.nc.subscribe("billing.invoices.get").await.unwrap();
    barrier(&server).await;
    let responder = tokio::spawn(async move {
        let req = requests.next().await.unwrap();
        server
            .nc
            .publish(req.reply.unwrap(), "ok".into())
            .await
            .unwrap();
        server.nc.flush().await.unwrap();
    });
    let client = connect(&url, &w.token("shop", "legacy", 600))
        .await
        .unwrap();
    let answer = tokio::time::timeout(WAIT, client.nc.request("billing.invoices.get", "q".into()))
        .await
        .unwrap()
        .expect("answered through the shared _INBOX.");
    assert_eq!(&answer.payload[..], b"ok");
    responder.await.unwrap();
    w.shutdown().await;
}
