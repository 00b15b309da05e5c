//! Real HTTP requests to `/healthz`, `/readyz` and `/metrics` of `http::serve`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nats_k8s_callout::http::{serve, Health};
use nats_k8s_callout::metrics;
use nats_k8s_callout::testkit::eventually;
use nats_k8s_callout::testkit::nats_server::NatsServer;
use nats_k8s_callout::testkit::promtool;

/// How long a readiness or liveness flip may take.
const WITHIN: Duration = Duration::from_secs(5);

struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("header end");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Reply {
        status,
        content_type,
        body: body.to_string(),
    }
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path)
}

fn json(r: &Reply) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("bad JSON {:?}: {e}", r.body))
}

/// Polls until `f` holds (generous liveness deadline).
#[test]
fn readyz_names_each_check_and_flips_with_them() {
    let health = Arc::new(Health::new());
    let nats = Arc::new(AtomicBool::new(true));
    let cache = Arc::new(AtomicBool::new(false));
    let n = nats.clone();
    health.register_check(
        "nats",
        Box::new(move || {
            let ok = n.load(Ordering::SeqCst);
            (ok, if ok { "connected" } else { "disconnected" }.into())
        }),
    );
    let c = cache.clone();
    health.register_check(
        "sa_cache",
        Box::new(move || (c.load(Ordering::SeqCst), "synced?".into())),
    );
    let srv = serve("127.0.0.1:0", health.clone()).unwrap();
    let addr = srv.local_addr();

    let r = get(addr, "/readyz");
    assert_eq!(r.status, 503);
    assert_eq!(r.content_type, "application/json");
    let v = json(&r);
    assert_eq!(v["ready"], false);
    assert_eq!(v["checks"]["nats"]["ok"], true);
    assert_eq!(v["checks"]["nats"]["detail"], "connected");
    assert_eq!(v["checks"]["sa_cache"]["ok"], false);

    cache.store(true, Ordering::SeqCst);
    let r = get(addr, "/readyz");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json(&r)["ready"], true);

    nats.store(false, Ordering::SeqCst);
    let r = get(addr, "/readyz");
    assert_eq!(r.status, 503);
    assert_eq!(json(&r)["checks"]["nats"]["detail"], "disconnected");

    nats.store(true, Ordering::SeqCst);
    assert_eq!(get(addr, "/readyz").status, 200);
    srv.stop();
}

#[test]
fn readiness_follows_a_dependency_that_goes_away_and_returns() {
    // A stand-in for NATS / the API server: a listener on a free port, checked by connecting.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let dep = listener.local_addr().unwrap();
    let health = Arc::new(Health::new());
    health.register_check(
        "upstream",
        Box::new(
            move || match TcpStream::connect_timeout(&dep, Duration::from_millis(500)) {
                Ok(_) => (true, "reachable".into()),
                Err(e) => (false, format!("unreachable: {}", e.kind())),
            },
        ),
    );
    let srv = serve("127.0.0.1:0", health).unwrap();
    let addr = srv.local_addr();
    assert_eq!(get(addr, "/readyz").status, 200);
    drop(listener);
    eventually("readyz 503 after the dependency left", WITHIN, || {
        get(addr, "/readyz").status == 503
    });
    let _back = TcpListener::bind(dep).expect("rebind the same port");
    eventually("readyz 200 after the dependency returned", WITHIN, || {
        get(addr, "/readyz").status == 200
    });
}

#[test]
fn shutdown_makes_readyz_503_for_good_but_not_healthz() {
    let health = Arc::new(Health::new());
    health.register_check("always", Box::new(|| (true, "fine".into())));
    let srv = serve("127.0.0.1:0", health.clone()).unwrap();
    let addr = srv.local_addr();
    assert_eq!(get(addr, "/readyz").status, 200);
    health.begin_shutdown();
    for _ in 0..3 {
        let r = get(addr, "/readyz");
        assert_eq!(r.status, 503);
        let v = json(&r);
        assert_eq!(v["ready"], false);
        assert_eq!(v["checks"]["always"]["ok"], true);
        assert_eq!(v["checks"]["shutdown"]["ok"], false);
    }
    assert_eq!(get(addr, "/healthz").status, 200);
}

#[test]
fn healthz_fails_when_a_heartbeat_goes_stale_or_its_thread_dies() {
    let health = Arc::new(Health::new());
    let srv = serve("127.0.0.1:0", health.clone()).unwrap();
    let addr = srv.local_addr();

    let hb = health.heartbeat("worker-1", Duration::from_millis(1500));
    let r = get(addr, "/healthz");
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));

    std::thread::sleep(Duration::from_millis(2000));
    let r = get(addr, "/healthz");
    assert_eq!(r.status, 503);
    assert!(r.body.contains("worker-1"), "{}", r.body);

    hb.beat();
    assert_eq!(get(addr, "/healthz").status, 200);

    // A thread that ends on purpose is not a failure.
    drop(hb);
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(get(addr, "/healthz").status, 200);

    // A thread that panics while holding its heartbeat is.
    let h2 = health.clone();
    let t = std::thread::spawn(move || {
        let _hb = h2.heartbeat("jwks-refresh", Duration::from_secs(3600));
        panic!("simulated bug");
    });
    assert!(t.join().is_err());
    let r = get(addr, "/healthz");
    assert_eq!(r.status, 503);
    assert!(r.body.contains("jwks-refresh (thread died)"), "{}", r.body);
}

#[test]
fn metrics_unknown_paths_and_methods() {
    let health = Arc::new(Health::new());
    metrics::global()
        .counter(
            "nats_k8s_callout_http_test_total",
            "Test counter.",
            &[("reason", "x")],
        )
        .add(7);
    let srv = serve("127.0.0.1:0", health).unwrap();
    let addr = srv.local_addr();
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(r
        .body
        .contains("nats_k8s_callout_http_test_total{reason=\"x\"} 7\n"));
    assert!(r.body.contains(&format!(
        "nats_k8s_callout_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    )));
    assert!(r.body.contains("\nprocess_resident_memory_bytes "));
    assert!(r.body.contains("\nprocess_cpu_seconds_total "));
    assert_eq!(get(addr, "/nope").status, 404);
    assert_eq!(get(addr, "/metrics?x=1").status, 200);
    assert_eq!(request(addr, "POST", "/readyz").status, 405);
    srv.stop();
    eventually("the listener closes after stop()", WITHIN, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err()
    });
}

#[test]
fn promtool_accepts_live_metrics() {
    let reg = metrics::global();
    reg.counter(
        "nats_k8s_callout_promtool_decisions_total",
        "Decisions by result and reason.",
        &[("result", "deny"), ("reason", "expired")],
    )
    .add(3);
    reg.counter(
        "nats_k8s_callout_promtool_decisions_total",
        "Decisions by result and reason.",
        &[("result", "allow"), ("reason", "ok")],
    )
    .inc();
    reg.gauge(
        "nats_k8s_callout_promtool_queue_depth",
        "Requests waiting.",
        &[],
    )
    .set(2);
    let h = reg.histogram(
        "nats_k8s_callout_promtool_decision_duration_seconds",
        "Decision latency.",
        &[],
        metrics::LATENCY_BUCKETS,
    );
    h.observe(Duration::from_micros(300));
    h.observe(Duration::from_millis(40));

    let srv = serve("127.0.0.1:0", Arc::new(Health::new())).unwrap();
    let body = get(srv.local_addr(), "/metrics").body;
    assert!(body.contains("nats_k8s_callout_promtool_decision_duration_seconds_bucket"));
    if let Err(text) = promtool::check_metrics(&body) {
        panic!("promtool check metrics complained:\n{text}\n--- metrics ---\n{body}");
    }
}

/// A cheap stand-in for the service's NATS check: the server answers with its INFO line.
fn nats_answers(addr: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(300))
        .map_err(|e| format!("connect: {}", e.kind()))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf)
        .map_err(|e| format!("read: {}", e.kind()))?;
    if &buf == b"INFO " {
        Ok(())
    } else {
        Err("not a NATS server".into())
    }
}

#[test]
fn readiness_follows_a_real_nats_server_going_away_and_returning() {
    // Started only to get its port and config; down until the check below has seen 503.
    let mut server = NatsServer::start("");
    server.stop();
    let nats_addr: SocketAddr = format!("127.0.0.1:{}", server.port()).parse().unwrap();
    let health = Arc::new(Health::new());
    health.register_check(
        "nats",
        Box::new(move || match nats_answers(nats_addr) {
            Ok(()) => (true, "connected".into()),
            Err(e) => (false, e),
        }),
    );
    let srv = serve("127.0.0.1:0", health).unwrap();
    let addr = srv.local_addr();

    let r = get(addr, "/readyz");
    assert_eq!(r.status, 503, "no server yet: {}", r.body);
    assert_eq!(json(&r)["checks"]["nats"]["ok"], false);

    server.restart();
    eventually("ready once nats-server is up", WITHIN, || {
        get(addr, "/readyz").status == 200
    });
    server.stop();
    eventually("not ready after nats-server went away", WITHIN, || {
        get(addr, "/readyz").status == 503
    });
    server.restart();
    eventually("ready again after nats-server returned", WITHIN, || {
        get(addr, "/readyz").status == 200
    });
}
