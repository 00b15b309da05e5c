//! Smoke test of the whole service wired as in production: the Kubernetes API double, a real
//! nats-server in config mode, the service (`App`) configured through its environment
//! variables, and an independent client (async-nats) logging in with a minted token.

use std::collections::HashMap;
use std::time::Duration;

use nats_k8s_callout::app::App;
use nats_k8s_callout::config::Config;
use nats_k8s_callout::testkit::k8s_double::{DoubleOptions, K8sDouble};
use nats_k8s_callout::testkit::nats_server::{CalloutServerConfig, NatsServer};
use nats_k8s_callout::testkit::TempDir;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_token_logs_in_with_namespace_permissions() {
    let double = K8sDouble::start(DoubleOptions::default()).unwrap();
    double.create_sa(
        "shop",
        "orders-api",
        &[("nats.io/allowed-pub-subjects", "billing.invoices.>")],
    );
    let account = nkeys::KeyPair::new_account();
    let dir = TempDir::new("e2e-smoke");
    let seed_file = dir.write("issuer.seed", &account.seed().unwrap());
    let api_token = dir.write("api-token", &double.token());
    let server =
        NatsServer::start(&CalloutServerConfig::new(account.public_key(), "s3cret").render());

    let env: HashMap<&str, String> = HashMap::from([
        ("NATS_URL", server.url()),
        ("NATS_USER", "auth".to_string()),
        ("NATS_PASSWORD", "s3cret".to_string()),
        ("NATS_SIGNING_KEY_FILE", seed_file),
        ("NATS_ACCOUNT", "APP".to_string()),
        ("JWT_ISSUER", double.issuer().to_string()),
        ("JWKS_URL", format!("{}/openid/v1/jwks", double.url())),
        ("K8S_API_URL", double.url()),
        ("K8S_TOKEN_FILE", api_token),
        ("HTTP_ADDR", "127.0.0.1:0".to_string()),
    ]);
    let cfg = Config::from_env(&|k| env.get(k).cloned()).expect("valid config");
    let app = tokio::task::spawn_blocking(move || {
        let app = App::start(&cfg).expect("service starts");
        assert!(
            app.wait_ready(Duration::from_secs(15)),
            "ready: {:?}",
            app.health().readiness()
        );
        // Liveness watches every long-running thread of the service.
        let beats = app.health().heartbeats();
        for t in [
            "sa-watch",
            "jwks-refresh",
            "callout-worker-0",
            "callout-worker-3",
        ] {
            assert!(
                beats.iter().any(|b| b == t),
                "{t} has no heartbeat: {beats:?}"
            );
        }
        assert_eq!(app.health().liveness(), Ok(()));
        app
    })
    .await
    .unwrap();

    let now = nats_k8s_callout::clock::unix_now();
    let token = double.mint_token("shop", "orders-api", &["nats"], now + 600);
    let client = async_nats::ConnectOptions::with_token(token)
        .connect(server.url())
        .await
        .expect("admitted");
    let mut sub = client.subscribe("shop.orders").await.unwrap();
    client.publish("shop.orders", "hi".into()).await.unwrap();
    let msg = tokio::time::timeout(
        Duration::from_secs(5),
        futures_util::StreamExt::next(&mut sub),
    )
    .await
    .expect("own namespace round trip")
    .unwrap();
    assert_eq!(&msg.payload[..], b"hi");

    let bad = double.mint_token("shop", "orders-api", &["kubernetes"], now + 600);
    let refused = async_nats::ConnectOptions::with_token(bad)
        .max_reconnects(Some(1))
        .connect(server.url())
        .await;
    assert!(refused.is_err(), "a token for another audience is refused");

    drop(client);
    tokio::task::spawn_blocking(move || assert!(app.shutdown(Duration::from_secs(5))))
        .await
        .unwrap();
}
