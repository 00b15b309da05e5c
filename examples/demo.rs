//! The local demo (README command 1, run by `scripts/demo`): the real thing on one machine.
//!
//! Starts a real `nats-server` with auth callout (config mode), the Kubernetes API double with
//! a few ServiceAccounts (one with cross-namespace annotations) and **the service binary**
//! (`target/debug/nats-k8s-callout`, configured by environment variables, its JSON logs in
//! `target/demo/service.log`). Then independent NATS clients (async-nats) log in with minted
//! ServiceAccount tokens and the demo prints, step by step, what each may do, with ✔ or ✘
//! against the expectation. Exits 1 if any step did not behave.
//!
//! Everything it started is stopped when it ends, fails or is interrupted (Ctrl-C / SIGTERM:
//! the children share the demo's process group; a signal thread stops them and removes the
//! temporary files). All keys and tokens are freshly generated TEST values.
//!
//! Environment: `NKC_BIN` (the service binary; default `<target>/debug/nats-k8s-callout`),
//! `NATS_SERVER_BIN` (see `scripts/install-deps`), `DEMO_SKIP_RUST_CLIENT=1`.

use std::any::Any;
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::{ConnectOptions, Event};
use futures_util::{FutureExt, StreamExt};
use nats_k8s_callout::clock::unix_now;
use nats_k8s_callout::testkit::k8s_double::{DoubleOptions, K8sDouble};
use nats_k8s_callout::testkit::nats_server::{free_port, CalloutServerConfig, NatsServer};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// What the demo started, stopped on every exit path (normal end, panic, signal).

static RESOURCES: Mutex<Vec<Box<dyn Any + Send>>> = Mutex::new(Vec::new());

fn keep(r: impl Any + Send) {
    RESOURCES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Box::new(r));
}

/// Stops everything, the last started first.
/// The example client while it runs (it is waited for on another thread).
static RUST_CLIENT_PID: AtomicU32 = AtomicU32::new(0);

fn cleanup() {
    let pid = RUST_CLIENT_PID.swap(0, Ordering::SeqCst);
    if pid != 0 {
        // SAFETY: kill(2) on our own child, which has not been reaped yet (its waiter clears
        // the pid first).
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    // Held until everything is stopped: a second caller (the main thread finishing while the
    // signal thread cleans up) waits instead of returning early and ending the process
    // halfway through.
    let mut all = RESOURCES.lock().unwrap_or_else(|p| p.into_inner());
    while let Some(r) = all.pop() {
        drop(r);
    }
}

/// Set once a signal arrived: the steps stop reporting (their failures are the shutdown's).
static STOPPING: AtomicBool = AtomicBool::new(false);

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The service process: SIGTERM on drop (it drains and exits), SIGKILL if it lingers.
struct ServiceProcess(Child);
impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let pid = self.0.id() as libc::pid_t;
        if matches!(self.0.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let end = Instant::now() + Duration::from_secs(12);
            while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Reporting

#[derive(Default)]
struct Report {
    passed: usize,
    failed: Vec<String>,
}

impl Report {
    fn step(&mut self, title: &str, expected: &str, ok: bool, detail: &str) {
        if STOPPING.load(Ordering::SeqCst) {
            return;
        }
        let mark = if ok { "\u{2714}" } else { "\u{2718}" };
        println!("  {mark} {title}");
        println!("      expected: {expected}; {detail}");
        if ok {
            self.passed += 1;
        } else {
            self.failed.push(title.to_string());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

struct Client {
    nc: async_nats::Client,
    events: mpsc::UnboundedReceiver<Event>,
    ns: String,
}

async fn connect(url: &str, token: &str, ns: &str) -> Result<Client, async_nats::ConnectError> {
    let (tx, events) = mpsc::unbounded_channel();
    let nc = ConnectOptions::with_token(token.to_string())
        .event_callback(move |e| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e);
            }
        })
        .max_reconnects(Some(1))
        .connection_timeout(WAIT)
        .connect(url)
        .await?;
    Ok(Client {
        nc,
        events,
        ns: ns.to_string(),
    })
}

/// A round trip on the client's own namespace: the server has processed what the client
/// sent before, and what the server sent before has arrived.
async fn barrier(c: &Client) -> bool {
    let subject = format!(
        "{}.demo-barrier.{:x}",
        c.ns,
        nats_k8s_callout::backoff::random_u64()
    );
    let Ok(mut sub) = c.nc.subscribe(subject.clone()).await else {
        return false;
    };
    if c.nc.publish(subject, "b".into()).await.is_err() {
        return false;
    }
    matches!(tokio::time::timeout(WAIT, sub.next()).await, Ok(Some(_)))
}

/// Did the server refuse `op` ("publish"/"subscription") on `subject` for this client?
async fn violation(c: &mut Client, op: &str, subject: &str) -> bool {
    let want = format!("permissions violation for {op} to \"{subject}\"").to_lowercase();
    tokio::time::timeout(WAIT, async {
        while let Some(e) = c.events.recv().await {
            if let Event::ServerError(async_nats::ServerError::Other(m)) = &e {
                if m.to_lowercase().contains(&want) {
                    return true;
                }
            }
        }
        false
    })
    .await
    .unwrap_or(false)
}

/// The client publishes on `subject` and receives it on its own subscription.
async fn own_round_trip(c: &Client, subject: &str) -> bool {
    let Ok(mut sub) = c.nc.subscribe(subject.to_string()).await else {
        return false;
    };
    if c.nc
        .publish(subject.to_string(), "hello".into())
        .await
        .is_err()
    {
        return false;
    }
    matches!(tokio::time::timeout(WAIT, sub.next()).await, Ok(Some(_)))
}

/// `publisher` publishes on `subject`; returns whether `receiver` got it and whether the
/// server reported a violation to the publisher.
async fn try_publish(publisher: &mut Client, receiver: &Client, subject: &str) -> (bool, bool) {
    let Ok(mut sub) = receiver.nc.subscribe(subject.to_string()).await else {
        return (false, false);
    };
    barrier(receiver).await;
    let _ = publisher
        .nc
        .publish(subject.to_string(), "hello".into())
        .await;
    let _ = publisher.nc.flush().await;
    let delivered = matches!(
        tokio::time::timeout(Duration::from_secs(2), sub.next()).await,
        Ok(Some(_))
    );
    if delivered {
        return (true, false);
    }
    let refused = violation(publisher, "publish", subject).await;
    // Ordered after the refusal: nothing can still be on its way to the receiver.
    barrier(receiver).await;
    let late = sub.next().now_or_never().flatten().is_some();
    (late, refused)
}

// ---------------------------------------------------------------------------------------------
// The service's log: the reason of the last refusal

/// Waits for the next `client refused` line after line `seen` of the JSON log; its reason.
fn next_refusal(log: &Path, seen: &mut usize) -> Option<String> {
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate().skip(*seen) {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            if v["result"] == "deny" {
                *seen = i + 1;
                return v["reason"].as_str().map(str::to_string);
            }
        }
        if Instant::now() > end {
            *seen = lines.len();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn log_len(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Logs in with `token`; expects a refusal with `reason` (checked in the service's log).
/// After a change in Kubernetes the service learns it through its watch, so with `settle`
/// the outcome may take up to 5 s to become the expected one (the step says how long).
async fn expect_refused(
    report: &mut Report,
    title: &str,
    url: &str,
    token: &str,
    reason: &str,
    log: &Path,
    settle: bool,
) {
    let started = Instant::now();
    let expected = format!("refused ({reason})");
    loop {
        let mut seen = log_len(log);
        let outcome = match connect(url, token, "").await {
            Ok(_) => Err("it was admitted".to_string()),
            Err(e) => {
                let got = next_refusal(log, &mut seen);
                let detail = format!(
                    "client saw: {e}; service logged reason: {}",
                    got.as_deref().unwrap_or("(none)")
                );
                if got.as_deref() == Some(reason) {
                    Ok(detail)
                } else {
                    Err(detail)
                }
            }
        };
        match outcome {
            Ok(detail) => {
                let after = if settle {
                    format!(" (in effect after {} ms)", started.elapsed().as_millis())
                } else {
                    String::new()
                };
                report.step(title, &expected, true, &format!("{detail}{after}"));
                return;
            }
            Err(detail) if !settle || started.elapsed() >= WAIT => {
                report.step(title, &expected, false, &detail);
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Main

fn main() -> ExitCode {
    // First, before any thread: SIGINT/SIGTERM arrive on a channel.
    let signals = nats_k8s_callout::signals::install();
    std::thread::spawn(move || {
        if let Ok(sig) = signals.recv() {
            STOPPING.store(true, Ordering::SeqCst);
            eprintln!(
                "\ndemo: {} received, stopping everything it started",
                sig.name()
            );
            cleanup();
            std::process::exit(130);
        }
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(run())));
    drop(rt);
    cleanup();
    match outcome {
        Ok(Ok(report)) if report.failed.is_empty() => {
            println!("\nAll {} steps behaved as expected.", report.passed);
            ExitCode::SUCCESS
        }
        Ok(Ok(report)) => {
            println!(
                "\n{} of {} steps did NOT behave: {}",
                report.failed.len(),
                report.passed + report.failed.len(),
                report.failed.join("; ")
            );
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
        Err(_) => ExitCode::FAILURE,
    }
}

fn service_bin() -> Result<PathBuf, String> {
    let bin = match std::env::var_os("NKC_BIN").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
            .join("debug/nats-k8s-callout"),
    };
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "the service binary {} is missing: run `cargo build --bin nats-k8s-callout` (scripts/demo does)",
            bin.display()
        ))
    }
}

fn http_status(addr: SocketAddr, path: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    );
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    raw.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

async fn run() -> Result<Report, String> {
    let bin = service_bin()?;
    let tmp = std::env::temp_dir().join(format!("nkc-demo-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    keep(TempDir(tmp.clone()));
    let log_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/demo");
    std::fs::create_dir_all(&log_dir).map_err(|e| format!("{}: {e}", log_dir.display()))?;
    let log = log_dir.join("service.log");

    println!("nats-k8s-callout local demo\n");
    println!("Starting:");
    // The Kubernetes API double (in this process) with a few ServiceAccounts.
    let double = K8sDouble::start(DoubleOptions::default()).map_err(|e| e.to_string())?;
    double.create_sa("shop", "orders-api", &[]);
    double.create_sa(
        "shop",
        "reporting",
        &[
            ("nats.io/allowed-pub-subjects", "billing.invoices.>"),
            ("nats.io/allowed-sub-subjects", "billing.events.*"),
        ],
    );
    double.create_sa("billing", "invoices", &[]);
    println!("  Kubernetes API double   {} (ServiceAccounts shop/orders-api, shop/reporting with annotations, billing/invoices)", double.url());

    // nats-server with auth callout (config mode): the service signs with this TEST account key.
    let account = nkeys::KeyPair::new_account();
    let write = |name: &str, text: &str| -> Result<String, String> {
        let p = tmp.join(name);
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(p.display().to_string())
    };
    let seed_file = write("issuer.seed", &account.seed().map_err(|e| e.to_string())?)?;
    let api_token = write("api-token", &double.token())?;
    let password = format!("demo-{:x}", nats_k8s_callout::backoff::random_u64());
    let server =
        NatsServer::start(&CalloutServerConfig::new(account.public_key(), &password).render());
    let url = server.url();
    println!(
        "  nats-server (callout)   {url} (pid {})",
        server.pid().unwrap_or(0)
    );
    keep(server);

    // The service binary, configured by environment variables.
    let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let log_file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let child = Command::new(&bin)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NATS_URL", &url)
        .env("NATS_USER", "auth")
        .env("NATS_PASSWORD", &password)
        .env("NATS_SIGNING_KEY_FILE", &seed_file)
        .env("NATS_ACCOUNT", "APP")
        .env("JWT_ISSUER", double.issuer())
        .env("JWKS_URL", format!("{}/openid/v1/jwks", double.url()))
        .env("K8S_API_URL", double.url())
        .env("K8S_TOKEN_FILE", &api_token)
        .env("HTTP_ADDR", http.to_string())
        .env("LOG_FORMAT", "json")
        .env("LOG_LEVEL", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    println!(
        "  nats-k8s-callout        pid {}, http://{http}/readyz, logs in {}",
        child.id(),
        log.display()
    );
    keep(ServiceProcess(child));
    let end = Instant::now() + Duration::from_secs(30);
    while http_status(http, "/readyz") != 200 {
        if Instant::now() > end {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            return Err(format!(
                "the service did not become ready within 30 s; last lines of {}:\n{}",
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("  service ready\n");

    let mut report = Report::default();
    let token = |ns: &str, sa: &str, secs: i64| {
        double.mint_token(ns, sa, &["nats"], (unix_now() as i64 + secs) as u64)
    };

    println!("1. Own namespace (default grant: publish and subscribe <namespace>.>)");
    let mut orders = connect(&url, &token("shop", "orders-api", 600), "shop")
        .await
        .map_err(|e| format!("shop/orders-api was not admitted: {e}"))?;
    let billing = connect(&url, &token("billing", "invoices", 600), "billing")
        .await
        .map_err(|e| format!("billing/invoices was not admitted: {e}"))?;
    let delivered = own_round_trip(&orders, "shop.orders.created").await;
    report.step(
        "shop/orders-api publishes to shop.orders.created",
        "accepted",
        delivered,
        if delivered {
            "delivered to its own subscription"
        } else {
            "not delivered"
        },
    );

    println!("2. A foreign namespace");
    let (delivered, refused) = try_publish(&mut orders, &billing, "billing.invoices.new").await;
    report.step(
        "shop/orders-api publishes to billing.invoices.new",
        "refused",
        refused && !delivered,
        &format!("server said Permissions Violation: {refused}; billing received it: {delivered}"),
    );

    println!("3. Annotation grant (shop/reporting: allowed-pub-subjects = billing.invoices.>)");
    let mut reporting = connect(&url, &token("shop", "reporting", 600), "shop")
        .await
        .map_err(|e| format!("shop/reporting was not admitted: {e}"))?;
    let (delivered, _) = try_publish(&mut reporting, &billing, "billing.invoices.new").await;
    report.step(
        "shop/reporting publishes to billing.invoices.new",
        "accepted",
        delivered,
        if delivered {
            "billing/invoices received it"
        } else {
            "billing/invoices did not receive it"
        },
    );
    let (delivered, refused) = try_publish(&mut reporting, &billing, "billing.payroll.run").await;
    report.step(
        "shop/reporting publishes to billing.payroll.run (not granted)",
        "refused",
        refused && !delivered,
        &format!("server said Permissions Violation: {refused}"),
    );

    println!("4. An annotation edited live (kubectl annotate sa orders-api nats.io/allowed-pub-subjects=billing.invoices.>)");
    double.set_annotations(
        "shop",
        "orders-api",
        &[("nats.io/allowed-pub-subjects", "billing.invoices.>")],
    );
    let started = Instant::now();
    let mut granted = false;
    while !granted && started.elapsed() < WAIT {
        if let Ok(mut c) = connect(&url, &token("shop", "orders-api", 600), "shop").await {
            granted = try_publish(&mut c, &billing, "billing.invoices.new")
                .await
                .0;
        }
    }
    report.step(
        "a new shop/orders-api connection publishes to billing.invoices.new",
        "accepted (the service watches ServiceAccounts)",
        granted,
        &format!("granted after {} ms", started.elapsed().as_millis()),
    );
    let (delivered, refused) = try_publish(&mut orders, &billing, "billing.invoices.new").await;
    report.step(
        "the connection opened before the edit publishes to billing.invoices.new",
        "refused (permissions are fixed at login until the next reconnect)",
        refused && !delivered,
        &format!("server said Permissions Violation: {refused}"),
    );

    println!("5. Deleted and re-created ServiceAccount");
    let old_token = token("shop", "orders-api", 600);
    double.delete_sa("shop", "orders-api");
    expect_refused(
        &mut report,
        "shop/orders-api (deleted) logs in",
        &url,
        &old_token,
        "sa_not_found",
        &log,
        true,
    )
    .await;
    double.create_sa("shop", "orders-api", &[]);
    expect_refused(
        &mut report,
        "shop/orders-api (re-created, new uid) logs in with a token of the deleted one",
        &url,
        &old_token,
        "sa_uid_mismatch",
        &log,
        true,
    )
    .await;
    let fresh = connect(&url, &token("shop", "orders-api", 600), "shop").await;
    report.step(
        "shop/orders-api (re-created) logs in with a new token",
        "accepted",
        fresh.is_ok(),
        &fresh
            .as_ref()
            .map_or_else(|e| e.to_string(), |_| "admitted".to_string()),
    );

    println!("6. Expired token");
    expect_refused(
        &mut report,
        "shop/reporting logs in with a token that expired an hour ago",
        &url,
        &token("shop", "reporting", -3600),
        "expired",
        &log,
        false,
    )
    .await;
    expect_refused(
        &mut report,
        "shop/reporting logs in with a token for another audience",
        &url,
        &double.mint_token("shop", "reporting", &["vault"], unix_now() + 600),
        "audience",
        &log,
        false,
    )
    .await;

    if std::env::var_os("DEMO_SKIP_RUST_CLIENT").is_none() {
        println!("7. The Rust client example: session ends at the token's expiry, resumes with the rotated token file");
        rust_client_step(&mut report, &double, &url, &tmp).await;
    }

    drop((orders, billing, reporting));
    if STOPPING.load(Ordering::SeqCst) {
        return Ok(report);
    }
    // Show what the service counted.
    println!("\nThe service's decisions (from http://{http}/metrics):");
    for line in metrics_lines(http) {
        println!("  {line}");
    }
    Ok(report)
}

fn metrics_lines(http: SocketAddr) -> Vec<String> {
    let Ok(mut s) = TcpStream::connect_timeout(&http, Duration::from_secs(1)) else {
        return vec![];
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    );
    let mut out = Vec::new();
    for line in std::io::BufReader::new(s).lines().map_while(Result::ok) {
        if line.starts_with("nats_k8s_callout_decisions_total{") && !line.ends_with(" 0") {
            out.push(line);
        }
    }
    out
}

async fn rust_client_step(report: &mut Report, double: &K8sDouble, url: &str, tmp: &Path) {
    let title = "examples/rust_client with a token expiring in 4 s (the file is rotated meanwhile)";
    let expected =
        "disconnected at expiry (User Authentication Expired), reconnected with the new token";
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("rust_client")));
    let Some(exe) = exe.filter(|p| p.is_file()) else {
        report.step(
            title,
            expected,
            false,
            "examples/rust_client is not built (cargo build --examples)",
        );
        return;
    };
    let token_file = tmp.join("rust-client-token");
    let short = double.mint_token("shop", "reporting", &["nats"], unix_now() + 4);
    if std::fs::write(&token_file, short).is_err() {
        report.step(title, expected, false, "cannot write the token file");
        return;
    }
    let child = Command::new(&exe)
        .env("NATS_URL", url)
        .env("NATS_TOKEN_FILE", &token_file)
        .env("POD_NAMESPACE", "shop")
        .env("SERVICE_ACCOUNT", "reporting")
        .env("RUN_SECONDS", "8")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(child) = child else {
        report.step(title, expected, false, "cannot start examples/rust_client");
        return;
    };
    RUST_CLIENT_PID.store(child.id(), Ordering::SeqCst);
    // The kubelet would rotate the file at ~80 % of the lifetime.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rotated = double.mint_token("shop", "reporting", &["nats"], unix_now() + 600);
    let _ = std::fs::write(&token_file, rotated);
    let out = tokio::task::spawn_blocking(move || {
        // Reads its output to the end (it exits by itself after RUN_SECONDS).
        let mut child = child;
        let mut stdout = String::new();
        if let Some(mut o) = child.stdout.take() {
            let _ = o.read_to_string(&mut stdout);
        }
        // Not reaped yet, so `cleanup` may still kill it until here.
        RUST_CLIENT_PID.store(0, Ordering::SeqCst);
        child.wait_with_output().map(|mut out| {
            out.stdout = stdout.into_bytes();
            out
        })
    })
    .await
    .ok()
    .and_then(Result::ok);
    let Some(out) = out else {
        report.step(
            title,
            expected,
            false,
            "examples/rust_client did not finish",
        );
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    for line in text.lines() {
        println!("      | {line}");
    }
    let expired = text.to_lowercase().contains("user authentication expired");
    let reads = text
        .lines()
        .find_map(|l| l.strip_prefix("rust_client: token file read "))
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    report.step(
        title,
        expected,
        out.status.success() && expired && reads >= 2,
        &format!(
            "session expired: {expired}; token file read {reads} times; last round trip ok: {}",
            out.status.success()
        ),
    );
}
