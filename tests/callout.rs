//! The auth callout end to end: a real nats-server (config mode and operator mode, with and
//! without xkey), our service on our NATS client, and async-nats as the independent client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{ConnectErrorKind, ConnectOptions, Event};
use futures_util::StreamExt;
use nats_k8s_callout::authz::{AuthRequest, Decider, Decision, Grant, Identity};
use nats_k8s_callout::callout::process::{Outcome, M_BAD, M_DECISIONS, M_EXPIRED, M_REQUESTS};
use nats_k8s_callout::callout::{Callout, CalloutConfig, CalloutHandle, Placement};
use nats_k8s_callout::clock::unix_now;
use nats_k8s_callout::metrics::Registry;
use nats_k8s_callout::nats::{Auth, Connection, Options};
use nats_k8s_callout::natsjwt::{self, AuthorizationRequest, Claims, REQUEST_AUDIENCE};
use nats_k8s_callout::permissions::{Permissions, SubjectRules};
use nats_k8s_callout::secret::Secret;
use nats_k8s_callout::testkit::nats_server::{self, NatsServer};
use nats_k8s_callout::testkit::operator::{OperatorOptions, OperatorSetup};
use nkeys::{KeyPair, XKey};
use tokio::runtime::Runtime;

const WAIT: Duration = Duration::from_secs(5);

/// "good" → pub/sub `app.>`; "slow" → the same after 1.5 s; "sleep4" → after 4 s;
/// anything else → deny `test_denied`.
fn test_decider() -> Arc<dyn Decider> {
    Arc::new(|r: &AuthRequest| {
        let token = r.bearer_token().unwrap_or("");
        match token {
            "slow" => std::thread::sleep(Duration::from_millis(1500)),
            "sleep4" => std::thread::sleep(Duration::from_secs(4)),
            "good" => {}
            _ => return Decision::deny("test_denied"),
        }
        let rules = SubjectRules {
            allow: vec!["app.>".into()],
            deny: vec![],
        };
        Decision::Allow(Grant {
            name: "app/tester".into(),
            permissions: Permissions {
                publish: rules.clone(),
                subscribe: rules,
                responses: None,
            },
            expires_at: Some(unix_now() + 600),
            tags: vec!["k8s-namespace:app".into()],
            identity: Identity {
                namespace: "app".into(),
                service_account: "tester".into(),
            },
        })
    })
}

fn registry() -> &'static Registry {
    Box::leak(Box::new(Registry::new()))
}

fn service_opts(url: &str, auth: Auth) -> Options {
    let mut o = Options::new(vec![url.to_string()]);
    o.auth = auth;
    o.connect_timeout = Duration::from_secs(3);
    o.reconnect_initial = Duration::from_millis(50);
    o.reconnect_max = Duration::from_millis(300);
    o.name = "callout-under-test".into();
    o
}

/// A running server, the service connection and the callout.
struct World {
    server: NatsServer,
    conn: Connection,
    callout: Option<CalloutHandle>,
    metrics: &'static Registry,
    /// The request `sub` the service expects.
    callout_account: String,
}

impl World {
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.metrics.counter(name, "", labels).get()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(h) = self.callout.take() {
            h.drain(Duration::from_secs(2));
        }
        self.conn.close();
    }
}

fn config_world(xkey: bool, timeout_secs: f64, tweak: impl FnOnce(&mut CalloutConfig)) -> World {
    let issuer = KeyPair::new_account();
    let service_x = xkey.then(XKey::new);
    let mut sc = nats_server::CalloutServerConfig::new(issuer.public_key(), "test-pw")
        .timeout_secs(timeout_secs);
    if let Some(x) = &service_x {
        sc = sc.xkey(x.public_key());
    }
    let server = NatsServer::start(&sc.render());
    let conn = Connection::connect(service_opts(
        &server.url(),
        Auth::UserPassword {
            user: "auth".into(),
            password: Secret::new("test-pw"),
        },
    ))
    .expect("service connects");
    let mut cfg = CalloutConfig::new(
        Placement::Config {
            account: "APP".into(),
        },
        Secret::new(issuer.seed().unwrap()),
    );
    cfg.xkey_seed = service_x.map(|x| Secret::new(x.seed().unwrap()));
    cfg.metrics = registry();
    tweak(&mut cfg);
    let metrics = cfg.metrics;
    let callout = Callout::start(&conn, cfg, test_decider()).expect("callout starts");
    conn.flush(WAIT).expect("subscription registered");
    World {
        server,
        conn,
        callout: Some(callout),
        metrics,
        callout_account: issuer.public_key(),
    }
}

fn operator_world(opts: OperatorOptions) -> World {
    let setup = OperatorSetup::generate(opts);
    let server = NatsServer::start(&setup.server_config(""));
    let creds = server.dir().join("service.creds");
    std::fs::write(&creds, &setup.service_creds).unwrap();
    let conn = Connection::connect(service_opts(&server.url(), Auth::CredsFile(creds)))
        .expect("service connects with creds");
    let mut cfg = setup.callout_config();
    cfg.metrics = registry();
    let metrics = cfg.metrics;
    let callout = Callout::start(&conn, cfg, test_decider()).expect("callout starts");
    conn.flush(WAIT).expect("subscription registered");
    World {
        server,
        conn,
        callout: Some(callout),
        metrics,
        callout_account: setup.callout_account.public_key(),
    }
}

fn rt() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

type Events = tokio::sync::mpsc::UnboundedReceiver<Event>;

async fn client(url: &str, token: &str) -> Result<(async_nats::Client, Events), ConnectErrorKind> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    ConnectOptions::with_token(token.to_string())
        .connection_timeout(WAIT)
        .max_reconnects(0)
        .event_callback(move |e| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e);
            }
        })
        .connect(url)
        .await
        .map(|c| (c, rx))
        .map_err(|e| e.kind())
}

/// Wait (bounded) for a permissions-violation event naming `subject`.
async fn expect_violation(events: &mut Events, subject: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let e = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no permissions violation for {subject} within 5 s"))
            .expect("event channel open");
        if let Event::ServerError(async_nats::ServerError::Other(text)) = &e {
            let t = text.to_ascii_lowercase();
            if t.contains("permissions violation") && t.contains(subject) {
                return;
            }
        }
    }
}

/// An admitted client may publish/subscribe `app.>` and nothing else.
async fn assert_admitted_with_app_permissions(url: &str) {
    let (c, mut events) = client(url, "good").await.expect("good token admitted");
    let mut sub = c.subscribe("app.echo").await.unwrap();
    c.flush().await.unwrap();
    c.publish("app.echo", "hello".into()).await.unwrap();
    let m = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("message within 5 s")
        .expect("subscription open");
    assert_eq!(&m.payload[..], b"hello");

    // Negative checks, each ordered by waiting for the server's error event.
    c.publish("other.x", "nope".into()).await.unwrap();
    expect_violation(&mut events, "other.x").await;
    let _denied_sub = c.subscribe("other.y").await.unwrap();
    expect_violation(&mut events, "other.y").await;

    // Still usable afterwards.
    c.publish("app.echo", "again".into()).await.unwrap();
    let m = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"again");
}

/// A denied client gets `Authorization Violation`, well before the server's auth timeout.
async fn assert_denied_fast(url: &str) {
    let t = Instant::now();
    let err = client(url, "bad-token")
        .await
        .expect_err("bad token refused");
    let took = t.elapsed();
    assert_eq!(err, ConnectErrorKind::AuthorizationViolation);
    assert!(took < Duration::from_millis(1500), "denial took {took:?}");
}

fn check_mode(w: &World) {
    let rt = rt();
    rt.block_on(assert_admitted_with_app_permissions(&w.server.url()));
    rt.block_on(assert_denied_fast(&w.server.url()));
    assert!(w.counter(M_REQUESTS, &[]) >= 2);
    assert_eq!(
        w.counter(M_DECISIONS, &[("result", "allow"), ("reason", "granted")]),
        1
    );
    assert_eq!(
        w.counter(
            M_DECISIONS,
            &[("result", "deny"), ("reason", "test_denied")]
        ),
        1
    );
}

#[test]
fn config_mode_plain() {
    let w = config_world(false, 2.0, |_| {});
    check_mode(&w);
}

#[test]
fn config_mode_xkey() {
    let w = config_world(true, 2.0, |_| {});
    check_mode(&w);
    // A plain request while an xkey is configured is refused.
    let h = w.callout.as_ref().unwrap().processor().clone();
    assert!(matches!(h.process(None, b"eyJhbGciOi.x.y"), Outcome::Drop));
    assert_eq!(w.counter(M_BAD, &[("reason", "plain_with_xkey")]), 1);
}

#[test]
fn operator_mode_plain_account_keys() {
    let w = operator_world(OperatorOptions {
        xkey: false,
        signing_keys: false,
    });
    check_mode(&w);
}

#[test]
fn operator_mode_xkey_signing_keys() {
    let w = operator_world(OperatorOptions {
        xkey: true,
        signing_keys: true,
    });
    check_mode(&w);
}

#[test]
fn operator_mode_xkey_account_keys() {
    let w = operator_world(OperatorOptions {
        xkey: true,
        signing_keys: false,
    });
    check_mode(&w);
}

fn forged_request(server: &KeyPair, account: &str, aud: &str, signer: &KeyPair) -> Vec<u8> {
    let mut n = AuthorizationRequest::default();
    n.server_id.id = server.public_key();
    n.user_nkey = KeyPair::new_user().public_key();
    n.connect_opts.auth_token = Some(Secret::new("good"));
    let mut c = Claims::new(account, unix_now(), n);
    c.aud = aud.into();
    c.exp = unix_now() + 5;
    let t = natsjwt::encode(&mut c, signer).unwrap();
    t.into_bytes()
}

#[test]
fn forged_requests_get_no_user_jwt() {
    let w = config_world(false, 2.0, |_| {});
    let p = w.callout.as_ref().unwrap().processor().clone();
    let server = KeyPair::new_server();
    let acc = w.callout_account.clone();
    // A request naming another callout account.
    let other = KeyPair::new_account().public_key();
    let r = forged_request(&server, &other, REQUEST_AUDIENCE, &server);
    assert!(matches!(p.process(None, &r), Outcome::Drop));
    assert_eq!(w.counter(M_BAD, &[("reason", "request_subject")]), 1);
    // Wrong audience.
    let r = forged_request(&server, &acc, "nats", &server);
    assert!(matches!(p.process(None, &r), Outcome::Drop));
    assert_eq!(w.counter(M_BAD, &[("reason", "request_audience")]), 1);
    // Bad signature: signed by another server key than `iss`.
    let good = String::from_utf8(forged_request(&server, &acc, REQUEST_AUDIENCE, &server)).unwrap();
    let (input, _) = good.rsplit_once('.').unwrap();
    let sig = KeyPair::new_server().sign(input.as_bytes()).unwrap();
    let forged = format!("{input}.{}", data_encoding::BASE64URL_NOPAD.encode(&sig));
    assert!(matches!(p.process(None, forged.as_bytes()), Outcome::Drop));
    assert_eq!(w.counter(M_BAD, &[("reason", "jwt_signature")]), 1);
    assert_eq!(
        w.counter(M_DECISIONS, &[("result", "allow"), ("reason", "granted")]),
        0,
        "no refused request reached the decider"
    );
    // The same request, correctly signed and addressed, is answered (so the checks above
    // refused for the stated reasons, not for anything else).
    let ok = forged_request(&server, &acc, REQUEST_AUDIENCE, &server);
    assert!(matches!(p.process(None, &ok), Outcome::Reply(_)));
    assert_eq!(
        w.counter(M_DECISIONS, &[("result", "allow"), ("reason", "granted")]),
        1,
        "only the well-formed request reached the decider"
    );
    // The real path still works.
    rt().block_on(assert_admitted_with_app_permissions(&w.server.url()));
}

#[test]
fn survives_server_restart() {
    let mut w = config_world(true, 2.0, |_| {});
    let url = w.server.url();
    let rt = rt();
    rt.block_on(async { client(&url, "good").await.expect("admitted before restart") });
    w.server.stop();
    let deadline = Instant::now() + WAIT;
    while w.conn.is_connected() {
        assert!(Instant::now() < deadline, "service never noticed the stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    w.server.restart();
    // The service reconnects and resubscribes by itself; clients are admitted again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match rt.block_on(client(&url, "good")) {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "not admitted after restart: {e:?}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    rt.block_on(assert_admitted_with_app_permissions(&url));
}

#[test]
fn slow_decision_does_not_delay_a_fast_one() {
    let w = config_world(false, 3.0, |_| {});
    let url = w.server.url();
    rt().block_on(async {
        let slow = tokio::spawn({
            let url = url.clone();
            async move {
                let r = client(&url, "slow").await.map(|_| ());
                (r, tokio::time::Instant::now())
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let fast = client(&url, "good").await.map(|_| ());
        let fast_done = tokio::time::Instant::now();
        assert!(fast.is_ok(), "fast client refused: {fast:?}");
        let (slow_res, slow_done) = slow.await.unwrap();
        assert!(slow_res.is_ok(), "slow client refused: {slow_res:?}");
        assert!(
            fast_done < slow_done,
            "the fast client waited for the slow decision"
        );
    });
}

#[test]
fn expired_requests_are_dropped_and_counted() {
    // One worker; the first decision takes 4 s, longer than the 2 s auth timeout, so the
    // second request's JWT has expired by the time the worker takes it. (`exp` has whole
    // seconds: a request sent at t has exp = floor(t) + 2 and counts as expired from
    // floor(t) + 3 on, so 3.8 s of waiting is always enough.)
    let w = config_world(false, 2.0, |c| c.workers = 1);
    let url = w.server.url();
    rt().block_on(async {
        let first = tokio::spawn({
            let url = url.clone();
            async move { client(&url, "sleep4").await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let second = client(&url, "good").await.map(|_| ());
        assert!(second.is_err(), "second client should time out");
        assert!(
            first.await.unwrap().is_err(),
            "first client should time out"
        );
    });
    let deadline = Instant::now() + WAIT;
    while w.counter(M_EXPIRED, &[]) == 0 {
        assert!(Instant::now() < deadline, "no expired request counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(w.counter(M_EXPIRED, &[]), 1);
    assert_eq!(
        w.counter(M_DECISIONS, &[("result", "allow"), ("reason", "granted")]),
        1,
        "only the slow request was decided"
    );
}

#[test]
fn drain_stops_taking_requests() {
    let mut w = config_world(false, 1.0, |_| {});
    let url = w.server.url();
    let rt = rt();
    rt.block_on(async { client(&url, "good").await.expect("admitted") });
    let h = w.callout.take().unwrap();
    assert!(h.drain(WAIT), "drain finished");
    // Nobody answers any more: the server times out (1 s) and refuses.
    let err = rt.block_on(client(&url, "good")).err();
    assert!(err.is_some(), "a client was admitted after drain");
    assert_eq!(w.counter(M_REQUESTS, &[]), 1);
}

#[test]
fn a_full_queue_drops_and_counts_instead_of_growing() {
    // One worker busy for 4 s, room for one waiting request: of three more clients at most
    // one can wait, the others are dropped (and counted) at once.
    let w = config_world(false, 2.0, |c| {
        c.workers = 1;
        c.queue_capacity = 1;
    });
    let url = w.server.url();
    rt().block_on(async {
        let busy = tokio::spawn({
            let url = url.clone();
            async move { client(&url, "sleep4").await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut others = Vec::new();
        for _ in 0..3 {
            let url = url.clone();
            others.push(tokio::spawn(async move {
                client(&url, "good").await.map(|_| ())
            }));
        }
        for o in others {
            assert!(o.await.unwrap().is_err(), "nobody can be admitted in time");
        }
        let _ = busy.await;
    });
    let full = w.callout.as_ref().unwrap().queue_full();
    assert!(full >= 2, "dropped {full}");
}
