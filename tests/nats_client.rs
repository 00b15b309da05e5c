//! Integration tests of our NATS client against a real nats-server (see `testkit::nats_server`).

use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nats_k8s_callout::nats::{Auth, Connection, Error, Headers, Message, Options, TlsOptions};
use nats_k8s_callout::secret::Secret;
use nats_k8s_callout::testkit::eventually;
use nats_k8s_callout::testkit::nats_server::{
    configs, tls_fixtures_dir, CalloutServerConfig, NatsServer,
};

const WAIT: Duration = Duration::from_secs(5);

fn opts(urls: &[String]) -> Options {
    let mut o = Options::new(urls.to_vec());
    o.connect_timeout = Duration::from_secs(3);
    o.reconnect_initial = Duration::from_millis(50);
    o.reconnect_max = Duration::from_millis(400);
    o.name = "nats-client-test".into();
    o
}

fn connect(url: &str) -> Connection {
    Connection::connect(opts(&[url.to_string()])).expect("connect")
}

fn recv(sub: &nats_k8s_callout::nats::Subscription) -> Message {
    sub.receiver()
        .recv_timeout(WAIT)
        .expect("message within 5 s")
}

/// A fake server for one connection: sends INFO, reads the client's CONNECT up to its PING,
/// answers `reply`, then holds the socket open for `hold`. Returns its URL and thread.
fn fake_server(reply: &'static [u8], hold: Duration) -> (String, std::thread::JoinHandle<()>) {
    use std::io::Write;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("nats://{}", listener.local_addr().unwrap());
    let holder = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"INFO {\"server_id\":\"fake\"}\r\n").unwrap();
        let mut got = Vec::new();
        let mut b = [0u8; 1024];
        while !String::from_utf8_lossy(&got).contains("PING\r\n") {
            let n = s.read(&mut b).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&b[..n]);
        }
        s.write_all(reply).unwrap();
        std::thread::sleep(hold);
    });
    (url, holder)
}

/// A subscription on `conn` receives what `conn` publishes.
fn assert_round_trip(conn: &Connection, subject: &str) {
    let sub = conn.subscribe(subject, None, 16).unwrap();
    conn.flush(WAIT).unwrap();
    conn.publish(subject, Some("reply.here"), b"ping!").unwrap();
    let m = recv(&sub);
    assert_eq!(m.subject, subject);
    assert_eq!(m.reply.as_deref(), Some("reply.here"));
    assert_eq!(m.payload, b"ping!");
}

#[test]
fn pub_sub_round_trip_and_server_info() {
    let srv = NatsServer::start("");
    let c = connect(&srv.url());
    assert!(c.is_connected());
    let info = c.server_info().unwrap();
    assert!(info.headers);
    assert!(info.version.starts_with("2."));
    assert_round_trip(&c, "a.b.c");
    // wildcard subscription, empty payload
    let sub = c.subscribe("w.*", None, 4).unwrap();
    c.flush(WAIT).unwrap();
    c.publish("w.x", None, b"").unwrap();
    let m = recv(&sub);
    assert_eq!((m.subject.as_str(), m.payload.len()), ("w.x", 0));
    // unsubscribe: no more messages; the channel disconnects once empty
    sub.unsubscribe();
    c.flush(WAIT).unwrap();
    c.publish("w.x", None, b"late").unwrap();
    c.flush(WAIT).unwrap();
    assert!(sub
        .receiver()
        .recv_timeout(Duration::from_millis(200))
        .is_err());
    // invalid subjects are refused locally
    assert_eq!(c.publish("a b", None, b"").unwrap_err().code(), "protocol");
    assert!(c.subscribe("", None, 1).is_err());
    c.close();
    assert!(!c.is_connected());
    assert_eq!(c.publish("a", None, b"").unwrap_err().code(), "closed");
}

#[test]
fn hmsg_headers_both_ways() {
    let srv = NatsServer::start("");
    let c = connect(&srv.url());
    let sub = c.subscribe("h", None, 4).unwrap();
    c.flush(WAIT).unwrap();
    let mut h = Headers::new();
    h.insert("Nats-Server-Xkey", "XKEYVALUE");
    h.append("Multi", "1");
    h.append("Multi", "2");
    c.publish_with_headers("h", None, &h, b"body").unwrap();
    let m = recv(&sub);
    let got = m.headers.expect("headers");
    assert_eq!(got.get("Nats-Server-Xkey"), Some("XKEYVALUE"));
    assert_eq!(got.get("nats-server-xkey"), None, "keys are case-sensitive");
    assert_eq!(got.get_all("Multi").collect::<Vec<_>>(), vec!["1", "2"]);
    assert_eq!(m.payload, b"body");
    // header injection is refused
    let mut bad = Headers::new();
    bad.insert("K", "v\r\nInjected: yes");
    assert!(c.publish_with_headers("h", None, &bad, b"").is_err());
}

#[test]
fn cross_check_with_async_nats() {
    let srv = NatsServer::start("");
    let ours = connect(&srv.url());
    let sub = ours.subscribe("x.from.async", None, 4).unwrap();
    ours.flush(WAIT).unwrap();
    let url = srv.url();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use futures_util::StreamExt;
        let theirs = async_nats::connect(url.as_str()).await.unwrap();
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Server-Xkey", "XFROMASYNC");
        theirs
            .publish_with_headers("x.from.async", h, "payload-a".into())
            .await
            .unwrap();
        theirs.flush().await.unwrap();
        let m = tokio::task::spawn_blocking(move || recv(&sub))
            .await
            .unwrap();
        assert_eq!(
            m.headers.unwrap().get("Nats-Server-Xkey"),
            Some("XFROMASYNC")
        );
        assert_eq!(m.payload, b"payload-a");

        // and the other way round
        let mut their_sub = theirs.subscribe("x.from.ours").await.unwrap();
        theirs.flush().await.unwrap();
        let mut h = Headers::new();
        h.insert("Our-Header", "ours");
        // async-nats' flush does not wait for the server, so its SUB may not be active yet:
        // publish until it arrives (bounded).
        let mut got = None;
        for _ in 0..25 {
            ours.publish_with_headers("x.from.ours", Some("r.1"), &h, b"payload-b")
                .unwrap();
            if let Ok(Some(m)) =
                tokio::time::timeout(Duration::from_millis(200), their_sub.next()).await
            {
                got = Some(m);
                break;
            }
        }
        let m = got.expect("async-nats received our message within 5 s");
        assert_eq!(&m.payload[..], b"payload-b");
        assert_eq!(m.reply.as_deref(), Some("r.1"));
        assert_eq!(
            m.headers.unwrap().get("Our-Header").map(|v| v.as_str()),
            Some("ours")
        );
    });
}

#[test]
fn user_password_auth() {
    let srv = NatsServer::start(&configs::user_password("alice", "s3cret"));
    let mut o = opts(&[srv.url()]);
    o.auth = Auth::UserPassword {
        user: "alice".into(),
        password: Secret::new("s3cret"),
    };
    let c = Connection::connect(o.clone()).unwrap();
    assert_round_trip(&c, "up");

    o.auth = Auth::UserPassword {
        user: "alice".into(),
        password: Secret::new("wrong-pass"),
    };
    let e = Connection::connect(o.clone()).unwrap_err();
    assert_eq!(e.code(), "authorization_violation", "{e}");
    assert!(!format!("{e} {e:?}").contains("wrong-pass"));
    o.auth = Auth::None;
    let e = Connection::connect(o).unwrap_err();
    assert_eq!(e.code(), "authorization_violation", "{e}");
}

#[test]
fn token_auth() {
    let srv = NatsServer::start(&configs::token("tok-123"));
    let mut o = opts(&[srv.url()]);
    o.auth = Auth::Token(Secret::new("tok-123"));
    assert_round_trip(&Connection::connect(o.clone()).unwrap(), "tok");
    o.auth = Auth::Token(Secret::new("tok-124"));
    let e = Connection::connect(o).unwrap_err();
    assert_eq!(e.code(), "authorization_violation", "{e}");
}

#[test]
fn nkey_seed_auth() {
    let kp = nkeys::KeyPair::new_user();
    let other = nkeys::KeyPair::new_user();
    let srv = NatsServer::start(&configs::nkey_users(&[&kp.public_key()]));
    assert!(srv.log().is_empty() || !srv.log().contains("[ERR]"));
    let mut o = opts(&[srv.url()]);
    o.auth = Auth::NkeySeed(Secret::new(kp.seed().unwrap()));
    assert_round_trip(&Connection::connect(o.clone()).unwrap(), "nk");
    o.auth = Auth::NkeySeed(Secret::new(other.seed().unwrap()));
    let e = Connection::connect(o).unwrap_err();
    assert_eq!(e.code(), "authorization_violation", "{e}");
}

fn tls_opts(url: String, ca: Option<&str>, client_cert: bool) -> Options {
    let d = tls_fixtures_dir();
    let mut o = opts(&[url]);
    o.tls = TlsOptions {
        ca_file: ca.map(|f| d.join(f)),
        cert_file: client_cert.then(|| d.join("client.pem")),
        key_file: client_cert.then(|| d.join("client-key.pem")),
        required: false,
    };
    o
}

#[test]
fn tls_with_custom_ca_and_wrong_ca() {
    let srv = NatsServer::start(&configs::tls(false));
    // the server requires TLS: a nats:// URL upgrades
    let c = Connection::connect(tls_opts(srv.url(), Some("ca.pem"), false)).unwrap();
    assert!(c.server_info().unwrap().tls_required);
    assert_round_trip(&c, "tls.a");
    // tls:// URL
    let url = format!("tls://127.0.0.1:{}", srv.port());
    let c = Connection::connect(tls_opts(url, Some("ca.pem"), false)).unwrap();
    assert_round_trip(&c, "tls.b");
    // the default webpki roots do not know the test CA
    let e = Connection::connect(tls_opts(srv.url(), None, false)).unwrap_err();
    assert_eq!(e.code(), "tls", "{e}");
    // a CA file holding some other certificate
    let e = Connection::connect(tls_opts(srv.url(), Some("client.pem"), false)).unwrap_err();
    assert_eq!(e.code(), "tls", "{e}");
    // a missing CA file
    let e = Connection::connect(tls_opts(srv.url(), Some("nope.pem"), false)).unwrap_err();
    assert_eq!(e.code(), "tls", "{e}");
}

#[test]
fn tls_client_certificate_required() {
    let srv = NatsServer::start(&configs::tls(true));
    let c = Connection::connect(tls_opts(srv.url(), Some("ca.pem"), true)).unwrap();
    assert_round_trip(&c, "mtls");
    let e = Connection::connect(tls_opts(srv.url(), Some("ca.pem"), false)).unwrap_err();
    assert!(matches!(e.code(), "tls" | "io" | "timeout"), "{e}");
}

#[test]
fn tls_required_by_client_against_plain_server_fails() {
    let srv = NatsServer::start("");
    let url = format!("tls://127.0.0.1:{}", srv.port());
    let e = Connection::connect(tls_opts(url, Some("ca.pem"), false)).unwrap_err();
    assert!(matches!(e.code(), "tls" | "io" | "timeout"), "{e}");
}

#[test]
fn queue_group_shares_the_load() {
    let srv = NatsServer::start("");
    let c = connect(&srv.url());
    let a = c.subscribe("work", Some("q"), 1000).unwrap();
    let b = c.subscribe("work", Some("q"), 1000).unwrap();
    c.flush(WAIT).unwrap();
    for i in 0..200 {
        c.publish("work", None, format!("{i}").as_bytes()).unwrap();
    }
    c.flush(WAIT).unwrap();
    let (na, nb) = (a.receiver().len(), b.receiver().len());
    assert_eq!(na + nb, 200, "each message goes to exactly one member");
    assert!(na > 0 && nb > 0, "both members get work: {na} {nb}");
}

#[test]
fn permissions_violation_is_surfaced() {
    let conf = r#"authorization { users: [ { user: u, password: p,
        permissions: { publish: { deny: ["secret.>"] }, subscribe: { deny: ["hidden.>"] } } } ] }"#;
    let srv = NatsServer::start(conf);
    let mut o = opts(&[srv.url()]);
    o.auth = Auth::UserPassword {
        user: "u".into(),
        password: Secret::new("p"),
    };
    let c = Connection::connect(o).unwrap();
    c.flush(WAIT).unwrap();
    c.publish("secret.x", None, b"no").unwrap();
    let e = c.flush(WAIT).unwrap_err();
    assert_eq!(e.code(), "permissions_violation", "{e}");
    assert!(c.last_error().unwrap().contains("secret.x"));
    // the connection stays usable and the next flush is clean
    c.publish("open", None, b"ok").unwrap();
    c.flush(WAIT).unwrap();
    let _s = c.subscribe("hidden.y", None, 1).unwrap();
    let e = c.flush(WAIT).unwrap_err();
    assert_eq!(e.code(), "permissions_violation", "{e}");
    assert!(c.is_connected());
}

#[test]
fn max_control_line_error_is_surfaced() {
    let srv = NatsServer::start("max_control_line: 256");
    let c = connect(&srv.url());
    let long = format!("s.{}", "x".repeat(400));
    c.publish(&long, None, b"").unwrap();
    assert!(c.flush(WAIT).is_err());
    eventually("the -ERR", WAIT, || c.last_error().is_some());
    assert!(c
        .last_error()
        .unwrap()
        .contains("maximum control line exceeded"));
}

#[test]
fn reconnects_and_resubscribes_after_restart() {
    let mut srv = NatsServer::start("");
    let c = connect(&srv.url());
    let sub = c.subscribe("re.>", None, 16).unwrap();
    let qsub = c.subscribe("req", Some("grp"), 16).unwrap();
    c.flush(WAIT).unwrap();
    let before = sub.sid();
    srv.stop();
    eventually("disconnect noticed", WAIT, || !c.is_connected());
    assert!(c.publish("re.x", None, b"while down").is_err());
    srv.restart();
    eventually("reconnect", WAIT, || c.is_connected());
    c.flush(WAIT).unwrap();
    let other = connect(&srv.url());
    other.publish("re.a", None, b"after").unwrap();
    other.publish("req", None, b"q-after").unwrap();
    other.flush(WAIT).unwrap();
    assert_eq!(recv(&sub).payload, b"after");
    assert_eq!(recv(&qsub).payload, b"q-after");
    assert_eq!(sub.sid(), before);
    assert_eq!(srv.starts(), 2);
}

#[test]
fn second_url_used_when_first_is_dead() {
    let srv = NatsServer::start("");
    let dead = format!(
        "nats://127.0.0.1:{}",
        nats_k8s_callout::testkit::nats_server::free_port()
    );
    let c = Connection::connect(opts(&[dead.clone(), srv.url()])).unwrap();
    assert_eq!(c.current_server(), srv.url());
    assert_round_trip(&c, "two");
    assert!(Connection::connect(opts(&[dead])).is_err());
}

#[test]
fn connect_timeout_against_a_silent_server() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("nats://{}", listener.local_addr().unwrap());
    // accept and hold connections without ever speaking
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().take(1) {
            held.push(s);
        }
        std::thread::sleep(Duration::from_secs(3));
    });
    let mut o = opts(&[url]);
    o.connect_timeout = Duration::from_millis(500);
    let t = Instant::now();
    let e = Connection::connect(o).unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.code(), "timeout", "{e}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(took >= Duration::from_millis(400), "took {took:?}");
    holder.join().unwrap();
}

#[test]
fn connect_timeout_when_server_stalls_after_info() {
    // Speaks INFO, then never answers the PING of the handshake.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("nats://{}", listener.local_addr().unwrap());
    let holder = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        use std::io::Write;
        s.write_all(b"INFO {\"server_id\":\"fake\",\"max_payload\":1024}\r\n")
            .unwrap();
        let mut sink = [0u8; 1024];
        let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
        let _ = s.read(&mut sink);
        std::thread::sleep(Duration::from_secs(2));
    });
    let mut o = opts(&[url]);
    o.connect_timeout = Duration::from_millis(500);
    let t = Instant::now();
    let e = Connection::connect(o).unwrap_err();
    assert_eq!(e.code(), "timeout", "{e}");
    assert!(t.elapsed() < Duration::from_secs(2));
    holder.join().unwrap();
}

#[test]
fn dead_link_detected_by_unanswered_pings() {
    // A fake server that completes the handshake, then goes silent (socket stays open).
    let (url, holder) = fake_server(b"PONG\r\n", Duration::from_secs(4));
    let mut o = opts(&[url]);
    o.ping_interval = Duration::from_millis(100);
    o.max_pings_out = 2;
    let c = Connection::connect(o).unwrap();
    assert!(c.is_connected());
    eventually("dead link detected", WAIT, || !c.is_connected());
    c.close();
    holder.join().unwrap();
}

#[test]
fn answers_server_pings() {
    let srv = NatsServer::start("ping_interval: \"100ms\"\nping_max: 1");
    let c = connect(&srv.url());
    std::thread::sleep(Duration::from_millis(1000));
    assert!(c.is_connected());
    c.flush(WAIT).unwrap();
    assert!(!srv.log().contains("Stale Client"), "{}", srv.log());
}

#[test]
fn full_queue_drops_and_counts_but_keeps_the_link() {
    let srv = NatsServer::start("");
    let c = connect(&srv.url());
    let sub = c.subscribe("flood", None, 2).unwrap();
    c.flush(WAIT).unwrap();
    let metric = nats_k8s_callout::metrics::global().counter(
        nats_k8s_callout::nats::METRIC_DROPPED,
        "",
        &[],
    );
    let before = metric.get();
    for i in 0..50 {
        c.publish("flood", None, format!("{i}").as_bytes()).unwrap();
    }
    // the reader is not blocked: the PING round trip completes while the queue is full
    c.flush(WAIT).unwrap();
    assert_eq!(sub.receiver().len(), 2);
    assert_eq!(sub.dropped(), 48);
    assert!(metric.get() - before >= 48);
    assert_eq!(recv(&sub).payload, b"0");
    assert_eq!(recv(&sub).payload, b"1");
}

#[test]
fn drain_delivers_buffered_messages_then_closes() {
    let srv = NatsServer::start("");
    let c = connect(&srv.url());
    let other = connect(&srv.url());
    let sub = c.subscribe("d", None, 100).unwrap();
    c.flush(WAIT).unwrap();
    for i in 0..10 {
        other.publish("d", None, format!("{i}").as_bytes()).unwrap();
    }
    other.flush(WAIT).unwrap();
    eventually("10 buffered", WAIT, || sub.receiver().len() == 10);
    let rx = sub.receiver().clone();
    let worker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let mut got = Vec::new();
        // reads until the channel reports disconnected
        while let Ok(m) = rx.recv_timeout(WAIT) {
            got.push(String::from_utf8(m.payload).unwrap());
        }
        got
    });
    let t = Instant::now();
    c.drain(WAIT).unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "drain waited for the owner"
    );
    // published after the UNSUB: never delivered
    other.publish("d", None, b"after").unwrap();
    other.flush(WAIT).unwrap();
    let got = worker.join().unwrap();
    assert_eq!(got, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
    assert!(!c.is_connected());
    assert!(c.subscribe("x", None, 1).is_err());
}

#[test]
fn drain_subscriptions_keeps_publishing_open() {
    let srv = NatsServer::start("");
    let c = connect(&srv.url());
    let sub = c.subscribe("req", None, 10).unwrap();
    let replies = c.subscribe("rep", None, 10).unwrap();
    c.flush(WAIT).unwrap();
    c.publish("req", None, b"1").unwrap();
    c.flush(WAIT).unwrap();
    c.drain_subscriptions(WAIT).unwrap();
    assert_eq!(recv(&sub).payload, b"1");
    assert!(sub
        .receiver()
        .recv_timeout(Duration::from_millis(100))
        .is_err());
    // still connected: a reply can go out
    c.publish("rep", None, b"r").unwrap();
    c.flush(WAIT).unwrap();
    assert!(c.is_connected());
    drop(replies);
}

#[test]
fn lame_duck_moves_to_another_server() {
    let ldm = configs::quick_lame_duck();
    let a = NatsServer::start(&ldm);
    let b = NatsServer::start(&ldm);
    let c = Connection::connect(opts(&[a.url(), b.url()])).unwrap();
    assert_eq!(c.current_server(), a.url());
    let sub = c.subscribe("ldm", None, 4).unwrap();
    c.flush(WAIT).unwrap();
    a.lame_duck();
    eventually("move to b", WAIT, || {
        c.current_server() == b.url() && c.is_connected()
    });
    c.flush(WAIT).unwrap();
    let other = connect(&b.url());
    other.publish("ldm", None, b"on b").unwrap();
    other.flush(WAIT).unwrap();
    assert_eq!(recv(&sub).payload, b"on b");
}

#[test]
fn callout_config_is_accepted_by_the_server() {
    let issuer = nkeys::KeyPair::new_account();
    let xkey = nkeys::XKey::new();
    let conf = CalloutServerConfig::new(issuer.public_key(), "authpw")
        .xkey(xkey.public_key())
        .timeout_secs(0.5)
        .render();
    let srv = NatsServer::start(&conf);
    // the auth user bypasses the callout
    let mut o = opts(&[srv.url()]);
    o.auth = Auth::UserPassword {
        user: "auth".into(),
        password: Secret::new("authpw"),
    };
    let svc = Connection::connect(o.clone()).unwrap();
    let requests = svc.subscribe("$SYS.REQ.USER.AUTH", None, 4).unwrap();
    svc.flush(WAIT).unwrap();
    // anyone else goes to the callout; nobody answers, so the connect is refused
    o.auth = Auth::Token(Secret::new("some-token"));
    let e = Connection::connect(o).unwrap_err();
    assert_eq!(e.code(), "authorization_violation", "{e}");
    let m = recv(&requests);
    assert!(m.reply.unwrap().starts_with("$SYS._INBOX."));
    let h = m.headers.expect("xkey header");
    assert!(h.get("Nats-Server-Xkey").unwrap().starts_with('X'));
    let _ = PathBuf::new();
}

#[test]
fn errors_are_not_connected_while_down_and_never_buffer() {
    let mut srv = NatsServer::start("");
    let c = connect(&srv.url());
    srv.stop();
    eventually("disconnect", WAIT, || !c.is_connected());
    let e = c.publish("x", None, b"y").unwrap_err();
    assert_eq!(e.code(), "not_connected");
    assert!(matches!(
        c.flush(Duration::from_millis(100)),
        Err(Error::NotConnected)
    ));
}

/// Operator-mode server with one account; returns (server, account key pair).
fn operator_server() -> (NatsServer, nkeys::KeyPair) {
    use nats_k8s_callout::natsjwt::{self, Account, Claims, Operator};
    let op = nkeys::KeyPair::new_operator();
    let acc = nkeys::KeyPair::new_account();
    let now = nats_k8s_callout::clock::unix_now();
    let op_jwt = natsjwt::encode(
        &mut Claims::new(op.public_key(), now, Operator::default()),
        &op,
    )
    .unwrap();
    let acc_jwt = natsjwt::encode(
        &mut Claims::new(acc.public_key(), now, Account::default()),
        &op,
    )
    .unwrap();
    let conf = format!(
        "operator: {op_jwt}\nresolver: MEMORY\nresolver_preload: {{ {}: {acc_jwt} }}\n",
        acc.public_key()
    );
    (NatsServer::start(&conf), acc)
}

fn user_creds(account: &nkeys::KeyPair) -> String {
    use nats_k8s_callout::natsjwt::{self, Claims, User};
    let user = nkeys::KeyPair::new_user();
    let mut claims = Claims::new(
        user.public_key(),
        nats_k8s_callout::clock::unix_now(),
        User::default(),
    );
    let jwt = natsjwt::encode(&mut claims, account).unwrap();
    natsjwt::creds_text(&jwt, &user.seed().unwrap())
}

#[test]
fn creds_file_auth_rereads_the_file_on_every_connect() {
    let (srv, acc) = operator_server();
    let path = srv.dir().join("user.creds");
    std::fs::write(&path, user_creds(&acc)).unwrap();
    let mut o = opts(&[srv.url()]);
    o.auth = Auth::CredsFile(path.clone());
    let c = Connection::connect(o.clone()).unwrap();
    assert!(c.server_info().unwrap().nonce.is_some());
    assert_round_trip(&c, "creds.a");

    // a user of an account the server does not know: refused
    let stranger = nkeys::KeyPair::new_account();
    std::fs::write(&path, user_creds(&stranger)).unwrap();
    let e = Connection::connect(o.clone()).unwrap_err();
    assert_eq!(e.code(), "authorization_violation", "{e}");

    // a valid JWT with somebody else's seed: the nonce signature does not match
    let good = user_creds(&acc);
    let other_seed = nkeys::KeyPair::new_user().seed().unwrap();
    let jwt_line = good.lines().nth(1).unwrap();
    std::fs::write(
        &path,
        nats_k8s_callout::natsjwt::creds_text(jwt_line, &other_seed),
    )
    .unwrap();
    let e = Connection::connect(o.clone()).unwrap_err();
    assert_eq!(e.code(), "authorization_violation", "{e}");

    std::fs::write(&path, good).unwrap();
    assert_round_trip(&Connection::connect(o.clone()).unwrap(), "creds.b");

    std::fs::remove_file(&path).unwrap();
    let e = Connection::connect(o).unwrap_err();
    assert_eq!(e.code(), "credentials", "{e}");
}

#[test]
fn payload_over_the_server_limit_is_refused_locally() {
    let srv = NatsServer::start("max_payload: 1024");
    let c = connect(&srv.url());
    assert_eq!(c.server_info().unwrap().max_payload, 1024);
    let sub = c.subscribe("big", None, 4).unwrap();
    c.flush(WAIT).unwrap();
    let e = c.publish("big", None, &[7u8; 1025]).unwrap_err();
    assert_eq!(e.code(), "payload_too_large");
    let mut h = Headers::new();
    h.insert("K", "v");
    let e = c
        .publish_with_headers("big", None, &h, &[7u8; 1020])
        .unwrap_err();
    assert_eq!(e.code(), "payload_too_large");
    c.publish("big", None, &[7u8; 1024]).unwrap();
    assert_eq!(recv(&sub).payload.len(), 1024);
    assert!(c.is_connected());
}

#[test]
fn tls_connection_reconnects_after_restart() {
    let mut srv = NatsServer::start(&configs::tls(true));
    let c = Connection::connect(tls_opts(srv.url(), Some("ca.pem"), true)).unwrap();
    let sub = c.subscribe("tls.re", None, 4).unwrap();
    c.flush(WAIT).unwrap();
    let reconnects = nats_k8s_callout::metrics::global().counter(
        nats_k8s_callout::nats::METRIC_RECONNECTS,
        "",
        &[],
    );
    let before = reconnects.get();
    srv.restart();
    eventually("disconnect noticed", WAIT, || {
        !c.is_connected() || reconnects.get() > before
    });
    eventually("reconnect", WAIT, || c.is_connected());
    assert!(reconnects.get() > before);
    c.flush(WAIT).unwrap();
    c.publish("tls.re", None, b"again").unwrap();
    assert_eq!(recv(&sub).payload, b"again");
}

#[test]
fn oversized_connect_is_reported_as_max_control_line() {
    let srv = NatsServer::start(&configs::token(&"t".repeat(5000)));
    let mut o = opts(&[srv.url()]);
    o.auth = Auth::Token(Secret::new("t".repeat(5000)));
    let e = Connection::connect(o.clone()).unwrap_err();
    assert_eq!(e.code(), "max_control_line_exceeded", "{e}");
    assert!(!e.to_string().contains("tttttttt"));
    // and works once the server allows longer lines
    let srv = NatsServer::start(&format!(
        "max_control_line: 8192\n{}",
        configs::token(&"t".repeat(5000))
    ));
    o.servers = vec![srv.url()];
    assert_round_trip(&Connection::connect(o).unwrap(), "big.token");
}

#[test]
fn connection_and_subscription_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Connection>();
    check::<nats_k8s_callout::nats::Subscription>();
    let o = Options {
        auth: Auth::UserPassword {
            user: "u".into(),
            password: Secret::new("pw-never-printed"),
        },
        ..Options::new(vec!["nats://127.0.0.1:1".into()])
    };
    assert!(!format!("{o:?}").contains("pw-never-printed"));
}

#[test]
fn subscription_drain_keeps_in_flight_messages() {
    let srv = NatsServer::start("");
    let c = connect(&srv.url());
    let other = connect(&srv.url());
    let sub = c.subscribe("sd", Some("q"), 1000).unwrap();
    c.flush(WAIT).unwrap();
    // a publisher racing with the drain: everything the server routed to us before the UNSUB
    // is delivered, nothing after it, and nothing is lost in between
    let publisher = std::thread::spawn(move || {
        for i in 0..500 {
            other
                .publish("sd", None, format!("{i}").as_bytes())
                .unwrap();
        }
        other.flush(WAIT).unwrap();
    });
    std::thread::sleep(Duration::from_millis(2));
    sub.drain(WAIT).unwrap();
    publisher.join().unwrap();
    let got: Vec<u32> = sub
        .receiver()
        .iter()
        .map(|m| String::from_utf8(m.payload).unwrap().parse().unwrap())
        .collect();
    // a prefix 0..n in order, with no gaps
    assert_eq!(got, (0..got.len() as u32).collect::<Vec<_>>());
    assert_eq!(sub.dropped(), 0);
    assert!(c.is_connected());
}

#[test]
fn learns_cluster_peers_from_info_and_fails_over_to_them() {
    let mut servers = NatsServer::cluster(2, "");
    let b_url = servers[1].url();
    let c = connect(&servers[0].url());
    let sub = c.subscribe("cl", None, 4).unwrap();
    c.flush(WAIT).unwrap();
    eventually("connect_urls announce the peer", WAIT, || {
        c.server_info()
            .is_some_and(|i| i.connect_urls.iter().any(|u| b_url.ends_with(u.as_str())))
    });
    servers[0].stop();
    eventually("failover to the announced peer", WAIT, || {
        c.is_connected() && c.current_server() == b_url
    });
    c.flush(WAIT).unwrap();
    let other = connect(&b_url);
    other.publish("cl", None, b"via b").unwrap();
    other.flush(WAIT).unwrap();
    assert_eq!(recv(&sub).payload, b"via b");
}

#[test]
fn garbage_from_the_server_drops_the_link_without_panicking() {
    let (url, holder) = fake_server(b"PONG\r\nMSG a 1 99999999999\r\n", Duration::from_secs(2));
    let c = Connection::connect(opts(&[url])).unwrap();
    eventually("link dropped", WAIT, || !c.is_connected());
    c.close();
    holder.join().unwrap();
}

/// `num_connections` from the server's monitor (`/connz`).
fn monitor_connections(srv: &NatsServer) -> u64 {
    use std::io::Write;
    let port = srv.monitor_port().expect("monitor enabled");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /connz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    let json = &body[body.find("\r\n\r\n").expect("http response") + 4..];
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v["num_connections"].as_u64().unwrap()
}

#[test]
fn dropping_the_last_handle_closes_the_connection() {
    let srv = NatsServer::start_with_monitor("");
    // the harness' readiness probe may still be counted for a moment
    eventually("no connections", WAIT, || monitor_connections(&srv) == 0);
    let c = connect(&srv.url());
    let sub = c.subscribe("x", None, 1).unwrap();
    let c2 = c.clone();
    drop(c);
    c2.flush(WAIT).unwrap();
    assert_eq!(monitor_connections(&srv), 1);
    drop(c2);
    // the subscription still holds the connection
    assert_eq!(monitor_connections(&srv), 1);
    drop(sub);
    eventually("server sees the close", WAIT, || {
        monitor_connections(&srv) == 0
    });
}

#[test]
fn nkey_auth_refuses_to_connect_without_a_nonce() {
    // A server without nkey users sends no nonce: we refuse rather than send an unsigned
    // CONNECT.
    let srv = NatsServer::start("");
    assert!(connect(&srv.url()).server_info().unwrap().nonce.is_none());
    let mut o = opts(&[srv.url()]);
    o.auth = Auth::NkeySeed(Secret::new(nkeys::KeyPair::new_user().seed().unwrap()));
    let e = Connection::connect(o).unwrap_err();
    assert_eq!(e.code(), "credentials", "{e}");
}
