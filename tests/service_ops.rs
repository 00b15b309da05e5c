//! Operational tests of the running service: readiness following NATS and the Kubernetes API
//! (going away and coming back), the binary's `--help`, `--version`, configuration errors,
//! SIGTERM (readiness false, in-flight requests answered, exit 0), `explain` and `check`, and no
//! secret in its JSON debug logs.
//!
//! The binary tests run `nats-k8s-callout` as a child process with a cleared environment; a
//! guard kills it on every exit path.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nats_k8s_callout::app::App;
use nats_k8s_callout::clock::unix_now;
use nats_k8s_callout::config::{Config, VARIABLES};
use nats_k8s_callout::testkit::k8s_double::{DoubleOptions, K8sDouble, ServiceAccount};
use nats_k8s_callout::testkit::nats_server::{free_port, CalloutServerConfig, NatsServer};
use nats_k8s_callout::testkit::promtool;
use nats_k8s_callout::testkit::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_nats-k8s-callout");
const AUTH_PASSWORD: &str = "ops-Pa55word-not-for-logs";
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Helpers

/// The double, a config-mode nats-server and the service's environment for them.
struct Setup {
    double: K8sDouble,
    server: NatsServer,
    env: HashMap<String, String>,
    seed: String,
    /// The service's curve seed when the callout requests are sealed.
    xkey_seed: Option<String>,
    dir: TempDir,
}

fn setup() -> Setup {
    setup_with(false)
}

fn setup_with(xkey: bool) -> Setup {
    let double = K8sDouble::start(DoubleOptions::default()).unwrap();
    double.create_sa(
        "shop",
        "orders-api",
        &[(
            "nats.io/allowed-pub-subjects",
            "billing.invoices.>, $SYS.x, bad subject",
        )],
    );
    let dir = TempDir::new("ops-setup");
    let account = nkeys::KeyPair::new_account();
    let seed = account.seed().unwrap();
    let seed_file = dir.write("issuer.seed", &seed);
    let api_token = dir.write("api-token", &double.token());
    let mut conf = CalloutServerConfig::new(account.public_key(), AUTH_PASSWORD);
    let x = xkey.then(nkeys::XKey::new);
    if let Some(x) = &x {
        conf = conf.xkey(x.public_key());
    }
    let server = NatsServer::start(&conf.render());
    let mut env = HashMap::from([
        ("NATS_URL".to_string(), server.url()),
        ("NATS_USER".into(), "auth".into()),
        ("NATS_PASSWORD".into(), AUTH_PASSWORD.into()),
        ("NATS_SIGNING_KEY_FILE".into(), seed_file),
        ("NATS_ACCOUNT".into(), "APP".into()),
        ("JWT_ISSUER".into(), double.issuer().to_string()),
        (
            "JWKS_URL".into(),
            format!("{}/openid/v1/jwks", double.url()),
        ),
        ("K8S_API_URL".into(), double.url()),
        ("K8S_TOKEN_FILE".into(), api_token),
        ("HTTP_ADDR".into(), "127.0.0.1:0".into()),
    ]);
    let xkey_seed = x.map(|x| x.seed().unwrap());
    if let Some(xs) = &xkey_seed {
        env.insert("NATS_XKEY_SEED_FILE".into(), dir.write("xkey.seed", xs));
    }
    Setup {
        double,
        server,
        env,
        seed,
        xkey_seed,
        dir,
    }
}

impl Setup {
    fn start_app(&self) -> App {
        let cfg = Config::from_env(&|k| self.env.get(k).cloned()).expect("valid config");
        let app = App::start(&cfg).expect("service starts");
        assert!(
            app.wait_ready(WAIT),
            "ready: {:?}",
            app.health().readiness()
        );
        app
    }

    fn token(&self, ns: &str, sa: &str) -> String {
        self.double.mint_token(ns, sa, &["nats"], unix_now() + 600)
    }

    /// The binary with exactly this environment (plus `extra`).
    fn command(&self, extra: &[(&str, &str)]) -> Command {
        let mut c = Command::new(BIN);
        c.env_clear().envs(&self.env);
        for (k, v) in extra {
            c.env(k, v);
        }
        c.stdin(Stdio::null());
        c
    }
}

/// One HTTP GET: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// Polls `/readyz` until `pred(status, body)` holds, at most `within`; returns the last answer.
fn wait_readyz(
    addr: SocketAddr,
    within: Duration,
    pred: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let end = Instant::now() + within;
    loop {
        let r = http_get(addr, "/readyz").unwrap_or((0, String::new()));
        if pred(r.0, &r.1) || Instant::now() > end {
            return r;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn check_of(body: &str, name: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v["checks"][name].clone()
}

/// Logs in with `token` through async-nats (the independent client); true if admitted.
fn admitted(url: &str, token: &str) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        async_nats::ConnectOptions::with_token(token.to_string())
            .max_reconnects(Some(1))
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .is_ok()
    })
}

/// A running binary, killed on drop. Its stdout and stderr are drained by threads from the
/// start, so a chatty process (debug logs) never blocks on a full pipe.
struct Running {
    child: Option<Child>,
    /// Threads collecting stdout and stderr.
    drains: Option<(Drain, Drain)>,
}
type Drain = JoinHandle<Vec<u8>>;
fn drain(mut r: impl Read + Send + 'static) -> Drain {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}
impl Running {
    fn new(mut child: Child) -> Running {
        let out = drain(child.stdout.take().expect("piped stdout"));
        let err = drain(child.stderr.take().expect("piped stderr"));
        Running {
            child: Some(child),
            drains: Some((out, err)),
        }
    }
    fn pid(&self) -> libc::pid_t {
        self.child.as_ref().unwrap().id() as libc::pid_t
    }
    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }
    fn collect(&mut self, status: std::process::ExitStatus) -> Output {
        let (out, err) = self.drains.take().unwrap();
        Output {
            status,
            stdout: out.join().unwrap(),
            stderr: err.join().unwrap(),
        }
    }
    /// Waits for the exit, at most `within`; returns the output (stderr included).
    fn wait(mut self, within: Duration) -> Output {
        let mut child = self.child.take().unwrap();
        let end = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return self.collect(status);
            }
            if Instant::now() > end {
                let _ = child.kill();
                let status = child.wait().unwrap();
                let out = self.collect(status);
                panic!(
                    "did not exit within {within:?}; stderr:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts the binary serving HTTP on a free port; returns it and the HTTP address once ready.
fn run_service(s: &Setup, extra: &[(&str, &str)]) -> (Running, SocketAddr) {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let a = addr.to_string();
    let mut all = vec![("HTTP_ADDR", a.as_str())];
    all.extend_from_slice(extra);
    let child = s
        .command(&all)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the binary");
    let run = Running::new(child);
    let (status, body) = wait_readyz(addr, Duration::from_secs(20), |st, _| st == 200);
    assert_eq!(status, 200, "service did not become ready: {body}");
    (run, addr)
}

// ---------------------------------------------------------------------------------------------
// Readiness

#[test]
fn readiness_follows_nats_going_away_and_coming_back() {
    let mut s = setup();
    let app = s.start_app();
    let addr = app.http_addr();
    let (st, body) = wait_readyz(addr, WAIT, |st, _| st == 200);
    assert_eq!(st, 200, "{body}");
    assert_eq!(check_of(&body, "nats")["ok"], true, "{body}");

    s.server.stop();
    let (st, body) = wait_readyz(addr, WAIT, |st, _| st == 503);
    assert_eq!(st, 503, "readiness did not flip without NATS: {body}");
    assert_eq!(check_of(&body, "nats")["ok"], false, "{body}");
    // Only NATS is missing.
    assert_eq!(check_of(&body, "keys")["ok"], true, "{body}");
    assert_eq!(check_of(&body, "serviceaccounts")["ok"], true, "{body}");

    s.server.restart();
    let (st, body) = wait_readyz(addr, Duration::from_secs(20), |st, _| st == 200);
    assert_eq!(st, 200, "readiness did not come back with NATS: {body}");
    // The same service (not restarted) admits a client again.
    assert!(
        admitted(&s.server.url(), &s.token("shop", "orders-api")),
        "not admitted after NATS came back"
    );
    assert!(app.shutdown(WAIT));
}

#[test]
fn readiness_follows_the_kubernetes_api_while_the_cache_keeps_serving() {
    let s = setup();
    let app = s.start_app();
    let addr = app.http_addr();
    assert_eq!(wait_readyz(addr, WAIT, |st, _| st == 200).0, 200);

    s.double.go_down();
    let (st, body) = wait_readyz(addr, WAIT, |st, _| st == 503);
    assert_eq!(st, 503, "readiness did not flip without the API: {body}");
    let sa = check_of(&body, "serviceaccounts");
    assert_eq!(sa["ok"], false, "{body}");
    assert_eq!(check_of(&body, "nats")["ok"], true, "{body}");
    // The last known state still decides: a known account is admitted during the outage.
    assert!(
        admitted(&s.server.url(), &s.token("shop", "orders-api")),
        "the cache stopped serving during the API outage"
    );

    s.double.come_back().unwrap();
    let (st, body) = wait_readyz(addr, Duration::from_secs(40), |st, _| st == 200);
    assert_eq!(st, 200, "readiness did not come back with the API: {body}");
    assert_eq!(check_of(&body, "serviceaccounts")["ok"], true, "{body}");
    assert!(app.shutdown(WAIT));
}

// ---------------------------------------------------------------------------------------------
// The binary: --help, --version, bad configuration

#[test]
fn help_lists_every_variable_and_version_prints_the_version() {
    let out = Command::new(BIN)
        .arg("--help")
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for v in VARIABLES {
        assert!(
            help.lines().any(|l| l.trim() == v.name),
            "--help does not list {}",
            v.name
        );
        if !v.default.is_empty() {
            assert!(
                help.contains(&format!("[default: {}]", v.default)),
                "--help lacks the default of {}",
                v.name
            );
        }
    }
    for cmd in ["explain", "check"] {
        assert!(help.contains(cmd), "--help does not mention {cmd}");
    }

    let out = Command::new(BIN)
        .arg("--version")
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("nats-k8s-callout {}", env!("CARGO_PKG_VERSION"))
    );

    let out = Command::new(BIN)
        .arg("--bogus")
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_bad_configuration_prints_every_problem_and_no_secret() {
    let secret_password = "hunter2-Sup3r-secret";
    let secret_token = "tok-4f8a9b-very-secret";
    let out = Command::new(BIN)
        .env_clear()
        .env("NATS_USER", "auth")
        .env("NATS_PASSWORD", secret_password)
        .env("NATS_TOKEN", secret_token) // two login methods at once
        .env("NATS_URL", "http://nope:4222")
        .env("MAX_SESSION", "forever")
        .env("INBOX_POLICY", "public")
        .env("LOG_FORMAT", "xml")
        .env("HTTP_ADDR", "not-an-address")
        .env("TOKEN_LEEWAY", "999s")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit code 2 on a bad configuration"
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    for var in [
        "NATS_SIGNING_KEY_FILE",
        "NATS_ACCOUNT",
        "NATS_URL",
        "MAX_SESSION",
        "INBOX_POLICY",
        "LOG_FORMAT",
        "HTTP_ADDR",
        "TOKEN_LEEWAY",
        "NATS_TOKEN",
    ] {
        assert!(stderr.contains(var), "{var} not named in:\n{stderr}");
    }
    for secret in [secret_password, secret_token] {
        assert!(
            !stderr.contains(secret) && !stdout.contains(secret),
            "a secret was printed:\n{stderr}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// SIGTERM

#[test]
fn sigterm_flips_readiness_answers_requests_in_flight_and_exits_zero() {
    let s = setup();
    let (run, addr) = run_service(&s, &[("LOG_FORMAT", "json")]);
    // An account the cache does not know yet (bulk seed: no watch event), behind a slow API:
    // its decision waits on a lazy GET, so it is in flight when SIGTERM arrives.
    s.double.seed([ServiceAccount {
        namespace: "shop".into(),
        name: "late".into(),
        uid: "0d6e0c7e-6a3f-4b8e-9d62-6c1e3c0b2f11".into(),
        resource_version: 0,
        labels: Default::default(),
        annotations: Default::default(),
        deleting: false,
    }]);
    let token = s.token("shop", "late");
    s.double.set_delay(Duration::from_millis(400));
    let url = s.server.url();
    let login = std::thread::spawn(move || admitted(&url, &token));
    // Let the request reach the service (it is then waiting on the slow GET).
    std::thread::sleep(Duration::from_millis(150));
    run.signal(libc::SIGTERM);
    // While draining, readiness is false (or the endpoint is already gone).
    let (st, body) = wait_readyz(addr, Duration::from_secs(2), |st, _| st != 200);
    assert_ne!(st, 200, "still ready after SIGTERM: {body}");
    if st == 503 {
        assert!(body.contains("shutting down"), "{body}");
    }
    let out = run.wait(Duration::from_secs(15));
    assert!(
        login.join().unwrap(),
        "the request in flight at SIGTERM was not answered with an admission; service log:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "exit status; log:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The admission was decided after the signal: it really was in flight.
    let log = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let signal = lines
        .iter()
        .position(|l| l["signal"] == "SIGTERM")
        .unwrap_or_else(|| panic!("no signal line: {log}"));
    // Every line naming the signal names it as such (not as a Debug of a Result).
    for l in lines.iter().filter(|l| !l["signal"].is_null()) {
        assert_eq!(l["signal"], "SIGTERM", "{l}");
    }
    let admission = lines
        .iter()
        .position(|l| l["service_account"] == "late" && l["result"] == "allow")
        .unwrap_or_else(|| panic!("no admission line: {log}"));
    assert!(
        signal < admission,
        "the request was not in flight at SIGTERM: {log}"
    );
}

// ---------------------------------------------------------------------------------------------
// explain and check

#[test]
fn explain_by_token_file_and_by_name_and_check() {
    let s = setup();
    s.double.create_sa("billing", "invoices", &[]);
    let token_file = s.dir.write("client-token", &s.token("shop", "orders-api"));

    let out = s
        .command(&[])
        .args(["explain", "--token-file", &token_file])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "token:      valid; issuer https://kubernetes.default.svc.cluster.local; shop/orders-api",
        "decision:   ALLOW as \"shop/orders-api\"",
        "publish:    allow [\"shop.>\", \"billing.invoices.>\"]",
        "inbox:      _INBOX_shop_orders-api",
        "responses:  may answer 1 reply per request received",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    // Each annotation entry with its verdict.
    let ann: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("annotations:"))
        .skip(1)
        .collect();
    assert_eq!(ann.len(), 3, "{text}");
    assert!(
        ann[0].contains("\"billing.invoices.>\"") && ann[0].ends_with("kept"),
        "{text}"
    );
    assert!(
        ann[1].contains("\"$SYS.x\"") && ann[1].contains("dropped ("),
        "{text}"
    );
    assert!(
        ann[2].contains("\"bad subject\"") && ann[2].contains("dropped ("),
        "{text}"
    );
    assert!(!text.contains(&std::fs::read_to_string(&token_file).unwrap()));

    // By name: same permissions; a missing account is a denial with its reason, exit 1.
    let out = s
        .command(&[])
        .args(["explain", "billing", "invoices"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("decision:   ALLOW as \"billing/invoices\""),
        "{text}"
    );
    assert!(
        text.contains("annotations: none (namespace default only)"),
        "{text}"
    );
    let out = s
        .command(&[])
        .args(["explain", "shop", "ghost"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("decision:   DENY (sa_not_found)"), "{text}");
    // A token for another audience: denied with the token reason.
    let bad = s.dir.write(
        "bad-token",
        &s.double
            .mint_token("shop", "orders-api", &["vault"], unix_now() + 600),
    );
    let out = s
        .command(&[])
        .args(["explain", "--token-file", &bad])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("decision:   DENY (audience)"));

    // check: everything reachable.
    let out = s.command(&[]).arg("check").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for want in [
        "[ ok ] configuration: valid",
        "[ ok ] nats: connected to",
        "[ ok ] kubernetes api:",
        "[ ok ] token keys: https://kubernetes.default.svc.cluster.local: 1 usable key(s)",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    // check with NATS and the API unreachable: each reported, exit 1.
    let dead = format!("nats://127.0.0.1:{}", free_port());
    let dead_api = format!("http://127.0.0.1:{}", free_port());
    let out = s
        .command(&[
            ("NATS_URL", dead.as_str()),
            ("K8S_API_URL", dead_api.as_str()),
        ])
        .arg("check")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("[FAIL] nats:"), "{text}");
    assert!(text.contains("[FAIL] kubernetes api:"), "{text}");
    assert!(
        text.contains("[ ok ] token keys:"),
        "JWKS_URL still points to the double: {text}"
    );
}

// ---------------------------------------------------------------------------------------------
// No secret in the logs

#[test]
fn no_secret_reaches_the_json_debug_log() {
    let s = setup_with(true);
    let (run, _addr) = run_service(&s, &[("LOG_FORMAT", "json"), ("LOG_LEVEL", "debug")]);
    let url = s.server.url();
    let good = s.token("shop", "orders-api");
    assert!(admitted(&url, &good), "a good token is admitted");
    // Refused tokens go through other logging paths: wrong audience, unknown account,
    // garbage, and a token sent as the password.
    let wrong_aud = s
        .double
        .mint_token("shop", "orders-api", &["vault"], unix_now() + 600);
    let unknown = s.token("shop", "nobody");
    let garbage = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.c2VjcmV0LWdhcmJhZ2Utc2ln";
    for t in [&wrong_aud, &unknown, &garbage.to_string()] {
        assert!(!admitted(&url, t));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let as_password = s
        .double
        .mint_token("shop", "orders-api", &["x"], unix_now() + 60);
    let pw = as_password.clone();
    let u = url.clone();
    let r = rt.block_on(async move {
        async_nats::ConnectOptions::with_user_and_password("someone".into(), pw)
            .max_reconnects(Some(1))
            .connect(u)
            .await
    });
    assert!(r.is_err());
    // SIGINT (Ctrl-C) stops it like SIGTERM.
    run.signal(libc::SIGINT);
    let out = run.wait(Duration::from_secs(15));
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(0),
        "exit status after SIGINT: {log}"
    );

    // The log is there, JSON, at debug, with the decisions.
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "DEBUG" || l["level"] == "debug"),
        "{log}"
    );
    for reason in ["audience", "sa_not_found", "unsupported_alg"] {
        assert!(
            lines.iter().any(|l| l["reason"] == reason),
            "no decision logged with reason {reason}: {log}"
        );
    }

    let api_token = s.double.token();
    let mut secrets: Vec<(&str, String)> = vec![
        ("NATS password", AUTH_PASSWORD.to_string()),
        ("signing seed", s.seed.clone()),
        ("API bearer token", api_token),
    ];
    for (name, t) in [
        ("admitted token", &good),
        ("wrong-audience token", &wrong_aud),
        ("unknown-account token", &unknown),
        ("token as password", &as_password),
    ] {
        let parts: Vec<&str> = t.split('.').collect();
        secrets.push((name, t.clone()));
        secrets.push(("token payload", parts[1].to_string()));
        secrets.push(("token signature", parts[2].to_string()));
    }
    secrets.push(("garbage signature", "c2VjcmV0LWdhcmJhZ2Utc2ln".to_string()));
    // Seeds appear in no form: also not the seed without its prefix.
    secrets.push(("seed body", s.seed[2..].to_string()));
    let xkey_seed = s.xkey_seed.clone().unwrap();
    secrets.push(("xkey seed body", xkey_seed[2..].to_string()));
    secrets.push(("xkey seed", xkey_seed));
    for (name, secret) in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "{name} found in the log:\n{log}"
        );
        // Nor a long piece of it.
        if secret.len() >= 40 {
            let mid = &secret[secret.len() / 2 - 12..secret.len() / 2 + 12];
            assert!(!log.contains(mid), "a piece of the {name} found in the log");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Live metrics of the running service

#[test]
fn live_metrics_of_the_running_service_count_decisions_and_pass_promtool() {
    let s = setup();
    let (run, addr) = run_service(&s, &[("LOG_FORMAT", "json")]);
    let url = s.server.url();
    let good = s.token("shop", "orders-api");
    assert!(admitted(&url, &good));
    let wrong_aud = s
        .double
        .mint_token("shop", "orders-api", &["vault"], unix_now() + 600);
    assert!(!admitted(&url, &wrong_aud));
    assert!(!admitted(&url, &wrong_aud));

    let (status, body) = http_get(addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    // Its own process: the counts are exact.
    for want in [
        "nats_k8s_callout_decisions_total{result=\"allow\",reason=\"granted\"} 1",
        "nats_k8s_callout_decisions_total{result=\"deny\",reason=\"audience\"} 2",
    ] {
        assert!(
            body.lines().any(|l| l == want),
            "missing {want:?} in:\n{body}"
        );
    }
    assert!(body.contains("nats_k8s_callout_build_info"), "{body}");
    assert!(
        body.contains("nats_k8s_callout_decision_duration_seconds_bucket"),
        "{body}"
    );
    for t in [&good, &wrong_aud] {
        assert!(
            !body.contains(t.split('.').nth(2).unwrap()),
            "a token in /metrics"
        );
    }
    // Label values are bounded: no subject, no namespace, no ServiceAccount name.
    assert!(
        !body.contains("orders-api"),
        "an unbounded label value in:\n{body}"
    );

    if let Err(text) = promtool::check_metrics(&body) {
        panic!("promtool check metrics complained:\n{text}\n--- metrics ---\n{body}");
    }
    run.signal(libc::SIGTERM);
    assert_eq!(run.wait(WAIT).status.code(), Some(0));
}
