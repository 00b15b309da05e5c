//! The benchmark harness (issue 7): what the service costs next to nats-server, side by side
//! with a null responder (the floor) and plain token auth (the ceiling). Run it through
//! `scripts/bench`, which builds the release binaries first.
//!
//! ```text
//! bench [--quick] [--out FILE] [--bin-dir DIR] [--only micro]
//! ```
//!
//! In one run it starts a real `nats-server` per responder, the Kubernetes API double (in this
//! process) and, in turn, each responder as a child process, and drives them with raw protocol
//! clients on `TcpStream` (INFO, `CONNECT {"auth_token":…}` + `PING`, then `PONG` = admitted or
//! `-ERR` = refused, close):
//! - A: sequential connects (ms per connect, p50/p99);
//! - B: a connect storm, C concurrent clients, N connects in all;
//! - C: CPU seconds (utime+stime from `/proc/<pid>/stat`) of the responder and of nats-server
//!   over B, per admitted connection;
//! - D: RSS of the service idle and with 10 000 / 100 000 ServiceAccounts, time to ready;
//! - E: in-process micro-benchmarks (token validation RS256/ES256, one whole decision).
//!
//! Prints tables on stdout and writes JSON (`target/bench/results.json` unless `--out`).
//! Loopback only; every child process and server is stopped on every exit path (Drop guards).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use nats_k8s_callout::authz::{Decider, Decision};
use nats_k8s_callout::callout::{self, Placement, Processor};
use nats_k8s_callout::clock::{unix_now, SystemClock};
use nats_k8s_callout::natsjwt::{self, AuthorizationRequest, Claims, REQUEST_AUDIENCE};
use nats_k8s_callout::policy::{self, PolicySettings};
use nats_k8s_callout::secret::Secret;
use nats_k8s_callout::testkit::k8s_double::{DoubleOptions, K8sDouble, ServiceAccount};
use nats_k8s_callout::testkit::nats_server::{free_port, CalloutServerConfig, NatsServer};
use nats_k8s_callout::token::{self, validate::KeyLookup, KeySet, TokenConfig};
use nkeys::{KeyPair, XKey};
use serde_json::{json, Value};

/// How long a client waits for the server's verdict (the server's auth timeout is 2 s).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a responder may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// ServiceAccounts the load generator's clients log in as (one per concurrent client).
const CLIENT_SAS: usize = 64;
const CLIENT_NAMESPACE: &str = "bench";

// ---------------------------------------------------------------------------------------------
// Parameters

struct Params {
    quick: bool,
    seq_n: usize,
    storm_c: usize,
    storm_n: usize,
    rounds: usize,
    mem_sizes: Vec<usize>,
    micro_iters: usize,
    out: PathBuf,
    bin_dir: PathBuf,
    only_micro: bool,
}

impl Params {
    fn from_args() -> Params {
        let exe = std::env::current_exe().expect("current exe");
        // target/release/examples/bench → target/release
        let default_bin = exe
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut p = Params {
            quick: false,
            seq_n: 1000,
            storm_c: 64,
            storm_n: 2000,
            rounds: 3,
            mem_sizes: vec![0, 10_000, 100_000],
            micro_iters: 3000,
            out: Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/results.json"),
            bin_dir: default_bin,
            only_micro: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => {
                    p.quick = true;
                    p.seq_n = 100;
                    p.storm_c = 16;
                    p.storm_n = 300;
                    p.rounds = 1;
                    p.mem_sizes = vec![0, 1_000];
                    p.micro_iters = 200;
                }
                "--out" => p.out = PathBuf::from(args.next().expect("--out FILE")),
                "--bin-dir" => p.bin_dir = PathBuf::from(args.next().expect("--bin-dir DIR")),
                "--only" => match args.next().as_deref() {
                    Some("micro") => p.only_micro = true,
                    other => panic!("--only micro (got {other:?})"),
                },
                "--micro-iters" => {
                    p.micro_iters = args
                        .next()
                        .and_then(|v| v.parse().ok())
                        .expect("--micro-iters N")
                }
                "-h" | "--help" => {
                    println!("usage: bench [--quick] [--out FILE] [--bin-dir DIR] [--only micro] [--micro-iters N]");
                    std::process::exit(0);
                }
                _ => panic!("unknown argument {a} (try --help)"),
            }
        }
        p
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics

#[derive(Default, Clone)]
struct Latencies(Vec<f64>); // milliseconds

impl Latencies {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }
    fn quantile(&self, q: f64) -> f64 {
        let v = self.sorted();
        if v.is_empty() {
            return f64::NAN;
        }
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v[i.min(v.len() - 1)]
    }
    fn max(&self) -> f64 {
        self.0.iter().cloned().fold(f64::NAN, f64::max)
    }
    fn mean(&self) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.iter().sum::<f64>() / self.0.len() as f64
    }
}

fn num(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

// ---------------------------------------------------------------------------------------------
// /proc accounting

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------------------------
// The load generator: raw protocol clients

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Admitted,
    Refused,
    Failed,
    Timeout,
}

/// One connect: TCP, INFO, CONNECT+PING, then PONG (admitted) or -ERR (refused); close.
fn raw_connect(port: u16, token: &str) -> (Outcome, f64) {
    let start = Instant::now();
    let outcome = connect_once(port, token, start + CLIENT_TIMEOUT);
    (outcome, start.elapsed().as_secs_f64() * 1000.0)
}

fn connect_once(port: u16, token: &str, deadline: Instant) -> Outcome {
    let addr = ([127, 0, 0, 1], port).into();
    let Ok(stream) = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT) else {
        return Outcome::Failed;
    };
    let _ = stream.set_nodelay(true);
    let mut w = match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return Outcome::Failed,
    };
    let mut r = BufReader::with_capacity(8192, stream);
    let mut line = String::new();
    let mut sent = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Outcome::Timeout;
        }
        let _ = r.get_ref().set_read_timeout(Some(left));
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) => return Outcome::Failed,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Outcome::Timeout
            }
            Err(_) => return Outcome::Failed,
        }
        if line.starts_with("INFO") {
            if !sent {
                let msg = format!(
                    "CONNECT {{\"auth_token\":{},\"verbose\":false,\"pedantic\":false,\"protocol\":1}}\r\nPING\r\n",
                    serde_json::to_string(token).unwrap_or_default()
                );
                if w.write_all(msg.as_bytes()).is_err() {
                    return Outcome::Failed;
                }
                sent = true;
            }
        } else if line.starts_with("PONG") {
            return if sent {
                Outcome::Admitted
            } else {
                Outcome::Failed
            };
        } else if line.starts_with("-ERR") {
            return Outcome::Refused;
        }
        // +OK, PING before CONNECT: ignore.
    }
}

#[derive(Default, Clone)]
struct RunResult {
    lat: Latencies, // admitted connects only
    admitted: usize,
    refused: usize,
    failed: usize,
    timeouts: usize,
    wall_s: f64,
}

impl RunResult {
    fn add(&mut self, o: Outcome, ms: f64) {
        match o {
            Outcome::Admitted => {
                self.admitted += 1;
                self.lat.0.push(ms);
            }
            Outcome::Refused => self.refused += 1,
            Outcome::Failed => self.failed += 1,
            Outcome::Timeout => self.timeouts += 1,
        }
    }
    fn merge(&mut self, o: RunResult) {
        self.lat.0.extend(o.lat.0);
        self.admitted += o.admitted;
        self.refused += o.refused;
        self.failed += o.failed;
        self.timeouts += o.timeouts;
        self.wall_s += o.wall_s;
    }

    fn json(&self) -> Value {
        json!({
            "admitted": self.admitted,
            "refused": self.refused,
            "failed": self.failed,
            "timeouts": self.timeouts,
            "wall_s": num(self.wall_s),
            "connects_per_s": num(self.admitted as f64 / self.wall_s),
            "p50_ms": num(self.lat.quantile(0.5)),
            "p99_ms": num(self.lat.quantile(0.99)),
            "max_ms": num(self.lat.max()),
            "mean_ms": num(self.lat.mean()),
        })
    }
}

fn sequential(port: u16, tokens: &[String], n: usize) -> RunResult {
    let mut r = RunResult::default();
    let start = Instant::now();
    for i in 0..n {
        let (o, ms) = raw_connect(port, &tokens[i % tokens.len()]);
        r.add(o, ms);
    }
    r.wall_s = start.elapsed().as_secs_f64();
    r
}

fn storm(port: u16, tokens: &[String], clients: usize, total: usize) -> RunResult {
    let next = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut handles = Vec::new();
    for c in 0..clients {
        let next = next.clone();
        let barrier = barrier.clone();
        let token = tokens[c % tokens.len()].clone();
        handles.push(std::thread::spawn(move || {
            let mut out = Vec::new();
            barrier.wait();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                out.push(raw_connect(port, &token));
            }
            out
        }));
    }
    barrier.wait();
    let start = Instant::now();
    let mut r = RunResult::default();
    for h in handles {
        for (o, ms) in h.join().expect("client thread") {
            r.add(o, ms);
        }
    }
    r.wall_s = start.elapsed().as_secs_f64();
    r
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// A child process killed (and reaped) on drop.
struct ChildGuard {
    child: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl ChildGuard {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
    fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keys and files shared by every responder of one run.
struct Setup {
    dir: PathBuf,
    issuer: KeyPair,
    issuer_seed_file: PathBuf,
    xkey: XKey,
    xkey_seed_file: PathBuf,
    auth_password: String,
    password_file: PathBuf,
    api_token_file: PathBuf,
    bin_dir: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    f.write_all(text.as_bytes()).expect("write file");
}

impl Setup {
    fn new(bin_dir: PathBuf, api_token: &str) -> Setup {
        let dir = std::env::temp_dir().join(format!(
            "nats-k8s-callout-bench-{}-{:x}",
            std::process::id(),
            nats_k8s_callout::backoff::random_u64()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let issuer = KeyPair::new_account();
        let xkey = XKey::new();
        let auth_password = format!("pw{:x}", nats_k8s_callout::backoff::random_u64());
        let s = Setup {
            issuer_seed_file: dir.join("issuer.seed"),
            xkey_seed_file: dir.join("xkey.seed"),
            password_file: dir.join("auth.password"),
            api_token_file: dir.join("api.token"),
            dir,
            issuer,
            xkey,
            auth_password,
            bin_dir,
        };
        write_private(&s.issuer_seed_file, &s.issuer.seed().expect("seed"));
        write_private(&s.xkey_seed_file, &s.xkey.seed().expect("xkey seed"));
        write_private(&s.password_file, &s.auth_password);
        write_private(&s.api_token_file, api_token);
        s
    }

    fn callout_server(&self, xkey: bool) -> NatsServer {
        let mut c = CalloutServerConfig::new(self.issuer.public_key(), self.auth_password.clone())
            .extra("max_control_line: 16384");
        if xkey {
            c = c.xkey(self.xkey.public_key());
        }
        NatsServer::start(&c.render())
    }

    fn spawn(&self, name: &str, cmd: &mut Command) -> ChildGuard {
        let log = self.dir.join(format!("{name}.log"));
        let f = std::fs::File::create(&log).expect("log file");
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdin = child.stdin.take();
        ChildGuard { child, stdin, log }
    }

    /// The null responder, once it printed `ready`.
    fn null_responder(&self, server: &NatsServer, xkey: bool) -> Result<ChildGuard, String> {
        let bin = self.bin_dir.join("examples/null_responder");
        let mut cmd = Command::new(&bin);
        cmd.args(["--url", &server.url(), "--user", "auth", "--account", "APP"])
            .arg("--password-file")
            .arg(&self.password_file)
            .arg("--issuer-seed-file")
            .arg(&self.issuer_seed_file)
            .args(["--workers", "4"]);
        if xkey {
            cmd.arg("--xkey-seed-file").arg(&self.xkey_seed_file);
        }
        let mut g = self.spawn("null_responder", &mut cmd);
        let out = g.child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if line.trim() != "ready" {
            return Err(format!("null responder did not start: {}", g.log_tail()));
        }
        Ok(g)
    }

    /// The service's environment, as in production (RS256 tokens, JWKS and ServiceAccounts from
    /// the API double, defaults for everything else; logs as JSON lines).
    fn service_env(
        &self,
        nats_url: &str,
        double: &K8sDouble,
        xkey: bool,
        http_port: u16,
    ) -> Vec<(String, String)> {
        let path = |p: &Path| p.display().to_string();
        let mut env = vec![
            ("NATS_URL", nats_url.to_string()),
            ("NATS_USER", "auth".to_string()),
            ("NATS_PASSWORD", self.auth_password.clone()),
            ("NATS_SIGNING_KEY_FILE", path(&self.issuer_seed_file)),
            ("NATS_ACCOUNT", "APP".to_string()),
            ("JWT_ISSUER", double.issuer().to_string()),
            ("JWKS_URL", format!("{}/openid/v1/jwks", double.url())),
            ("K8S_API_URL", double.url()),
            ("K8S_TOKEN_FILE", path(&self.api_token_file)),
            ("HTTP_ADDR", format!("127.0.0.1:{http_port}")),
            ("LOG_FORMAT", "json".to_string()),
        ];
        if xkey {
            env.push(("NATS_XKEY_SEED_FILE", path(&self.xkey_seed_file)));
        }
        env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// The real service, configured as in production, started (not yet ready).
    fn service(
        &self,
        server: &NatsServer,
        double: &K8sDouble,
        xkey: bool,
        http_port: u16,
    ) -> Result<ChildGuard, String> {
        let bin = self.bin_dir.join("nats-k8s-callout");
        if !bin.is_file() {
            return Err(format!("{} not built", bin.display()));
        }
        let mut cmd = Command::new(&bin);
        cmd.env_clear()
            .envs(self.service_env(&server.url(), double, xkey, http_port));
        let mut g = self.spawn(if xkey { "ours_xkey" } else { "ours" }, &mut cmd);
        // Logs go to stdout (JSON lines, as in production): keep them in the log file.
        if let Some(mut out) = g.child.stdout.take() {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&g.log)
                .expect("log file");
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut out, &mut f);
            });
        }
        if g.exited() {
            return Err(format!("service exited at start: {}", g.log_tail()));
        }
        Ok(g)
    }
}

/// True if `GET /readyz` answers 200.
fn ready(http_port: u16) -> bool {
    let addr = ([127, 0, 0, 1], http_port).into();
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 32];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    if std::env::var_os("BENCH_DEBUG").is_some() {
        eprintln!("readyz {http_port}: {head:?}");
    }
    head.starts_with("HTTP/1.") && head.get(9..12) == Some("200")
}

/// Waits for the service's readiness. Also notes when the double began serving the last page
/// of the service's first list (`pages` = ServiceAccounts / page size, rounded up; the cache
/// lists 500 per page): `ready − that` bounds the time from the list to readiness from above.
/// Returns (ready_ms, last_page_ms).
fn wait_ready(
    g: &mut ChildGuard,
    http_port: u16,
    double: &K8sDouble,
    pages: u64,
    started: Instant,
) -> Result<(f64, Option<f64>), String> {
    let lists_before = double.requests("list");
    let mut last_page = None;
    let deadline = started + READY_TIMEOUT;
    loop {
        if last_page.is_none() && double.requests("list") >= lists_before + pages {
            last_page = Some(started.elapsed().as_secs_f64() * 1000.0);
        }
        if ready(http_port) {
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            if last_page.is_none() && double.requests("list") >= lists_before + pages {
                last_page = Some(ms);
            }
            return Ok((ms, last_page));
        }
        if g.exited() {
            return Err(format!("service exited: {}", g.log_tail()));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "service not ready in {READY_TIMEOUT:?}: {}",
                g.log_tail()
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

// ---------------------------------------------------------------------------------------------
// ServiceAccounts

fn client_sa(i: usize) -> ServiceAccount {
    sa(CLIENT_NAMESPACE.to_string(), format!("client-{i:03}"), i)
}

/// A ServiceAccount with realistic metadata: a uid, a label, both `nats.io/` annotations and
/// a foreign annotation.
fn sa(namespace: String, name: String, i: usize) -> ServiceAccount {
    ServiceAccount {
        annotations: [
            (
                "nats.io/allowed-pub-subjects".to_string(),
                format!("orders.{namespace}.>, audit.{namespace}.events"),
            ),
            (
                "nats.io/allowed-sub-subjects".to_string(),
                "events.*.public, prices.>".to_string(),
            ),
            (
                "kubectl.kubernetes.io/last-applied-configuration".to_string(),
                "{\"apiVersion\":\"v1\",\"kind\":\"ServiceAccount\"}".to_string(),
            ),
        ]
        .into(),
        labels: [("app.kubernetes.io/name".to_string(), name.clone())].into(),
        uid: format!("{:08x}-1111-4222-8333-{:012x}", i, i * 7919),
        resource_version: 0,
        namespace,
        name,
        deleting: false,
    }
}

fn bulk_sa(i: usize) -> ServiceAccount {
    sa(
        format!("team-{:03}", i % 500),
        format!("workload-{i:06}"),
        1_000_000 + i,
    )
}

fn start_double(extra: usize) -> K8sDouble {
    let d = K8sDouble::start(DoubleOptions::default()).expect("start the Kubernetes API double");
    d.seed(
        (0..CLIENT_SAS)
            .map(client_sa)
            .chain((0..extra).map(bulk_sa)),
    );
    d
}

fn client_tokens(d: &K8sDouble) -> Vec<String> {
    let exp = unix_now() + 3600;
    (0..CLIENT_SAS)
        .map(|i| d.mint_token(CLIENT_NAMESPACE, &format!("client-{i:03}"), &["nats"], exp))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Responder variants (A, B, C)

/// One responder under test, with its own nats-server.
struct Live {
    name: &'static str,
    server: NatsServer,
    responder: Option<ChildGuard>,
    tokens: Vec<String>,
    seq: RunResult,
    storms: Vec<RunResult>,
    responder_cpu_s: f64,
    server_cpu_s: f64,
    rss_idle_kib: Option<u64>,
}

impl Live {
    fn responder_pid(&self) -> Option<u32> {
        self.responder.as_ref().map(ChildGuard::pid)
    }

    /// All storm rounds pooled (latencies, counts, wall time).
    fn storm(&self) -> RunResult {
        let mut all = RunResult::default();
        for r in &self.storms {
            all.merge(r.clone());
        }
        all
    }

    /// Connects per second: the median over the rounds.
    fn connects_per_s(&self) -> f64 {
        let mut v: Vec<f64> = self
            .storms
            .iter()
            .map(|r| r.admitted as f64 / r.wall_s)
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    }

    fn cpu_ms_per_connect(&self) -> (Option<f64>, f64) {
        let adm = self.storm().admitted.max(1) as f64;
        (
            self.responder
                .as_ref()
                .map(|_| self.responder_cpu_s * 1000.0 / adm),
            self.server_cpu_s * 1000.0 / adm,
        )
    }

    fn json(&self) -> Value {
        let (rc, sc) = self.cpu_ms_per_connect();
        let mut storm = self.storm().json();
        storm["connects_per_s"] = num(self.connects_per_s());
        storm["connects_per_s_rounds"] = self
            .storms
            .iter()
            .map(|r| num(r.admitted as f64 / r.wall_s))
            .collect();
        json!({
            "sequential": self.seq.json(),
            "storm": storm,
            "cpu": {
                "responder_s": self.responder.as_ref().map(|_| num(self.responder_cpu_s)),
                "server_s": num(self.server_cpu_s),
                "responder_ms_per_connect": rc.map(num),
                "server_ms_per_connect": num(sc),
                "responder_over_server": rc.map(|r| num(r / sc)),
            },
            "rss_kib": {
                "before_load": self.rss_idle_kib,
                "after_load": self.responder_pid().and_then(|pid| status_kib(pid, "VmRSS")),
            },
        })
    }
}

fn start_all(setup: &Setup, double: &K8sDouble, tokens: &[String]) -> (Vec<Live>, Vec<String>) {
    let mut live = Vec::new();
    let mut errors = Vec::new();
    let mut add = |name: &'static str,
                   server: NatsServer,
                   responder: Result<Option<ChildGuard>, String>,
                   tokens: &[String]| match responder {
        Ok(responder) => live.push(Live {
            name,
            server,
            responder,
            tokens: tokens.to_vec(),
            seq: RunResult::default(),
            storms: Vec::new(),
            responder_cpu_s: 0.0,
            server_cpu_s: 0.0,
            rss_idle_kib: None,
        }),
        Err(e) => errors.push(format!("{name}: {e}")),
    };

    // no callout: the same server with plain token auth (one token for every client).
    let conf = format!(
        "authorization {{ token: {} }}\nmax_control_line: 16384\n",
        nats_k8s_callout::testkit::nats_server::quote(&tokens[0])
    );
    add(
        "no_callout",
        NatsServer::start(&conf),
        Ok(None),
        &tokens[..1],
    );
    for (name, xkey) in [("null", false), ("null_xkey", true)] {
        let server = setup.callout_server(xkey);
        let r = setup.null_responder(&server, xkey).map(Some);
        add(name, server, r, tokens);
    }
    for (name, xkey) in [("ours", false), ("ours_xkey", true)] {
        let server = setup.callout_server(xkey);
        let port = free_port();
        let r = setup
            .service(&server, double, xkey, port)
            .and_then(|mut g| {
                wait_ready(&mut g, port, double, 1, Instant::now())?;
                Ok(Some(g))
            });
        add(name, server, r, tokens);
    }
    (live, errors)
}

/// A `perf record` of a responder, stopped (SIGINT, so it writes its file) on drop.
struct Perf(Child);

impl Drop for Perf {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGINT);
        }
        let _ = self.0.wait();
    }
}

/// With `BENCH_PERF_DIR` set (profiling only, it costs CPU): record the responder's call
/// graph during the first storm round into `<dir>/perf-<name>.data`.
fn perf_record(name: &str, pid: Option<u32>) -> Option<Perf> {
    let dir = PathBuf::from(std::env::var_os("BENCH_PERF_DIR")?);
    let pid = pid?;
    let _ = std::fs::create_dir_all(&dir);
    let child = Command::new("perf")
        .args([
            "record",
            "-q",
            "-g",
            "-F",
            "2000",
            "-p",
            &pid.to_string(),
            "-o",
        ])
        .arg(dir.join(format!("perf-{name}.data")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(300));
    Some(Perf(child))
}

/// A and B for every responder, interleaved in rounds so drift on a shared machine hits all
/// responders alike. CPU is accounted over B only.
fn run_variants(
    p: &Params,
    setup: &Setup,
    double: &K8sDouble,
    tokens: &[String],
) -> (Vec<Live>, Vec<String>) {
    eprintln!("starting every responder");
    let (mut live, mut errors) = start_all(setup, double, tokens);
    live.retain_mut(|l| {
        let warm = sequential(l.server.port(), &l.tokens, 20);
        if warm.admitted == 0 {
            errors.push(format!(
                "{}: no connect admitted in warm-up (refused {}, failed {}, timeouts {})",
                l.name, warm.refused, warm.failed, warm.timeouts
            ));
            return false;
        }
        l.rss_idle_kib = l.responder_pid().and_then(|pid| status_kib(pid, "VmRSS"));
        true
    });
    for round in 0..p.rounds {
        let n = p.seq_n / p.rounds + usize::from(round < p.seq_n % p.rounds);
        for l in &mut live {
            eprintln!("  round {}: {} A sequential × {n}", round + 1, l.name);
            let r = sequential(l.server.port(), &l.tokens, n);
            l.seq.merge(r);
        }
        for l in &mut live {
            eprintln!(
                "  round {}: {} B storm {} × {}",
                round + 1,
                l.name,
                p.storm_c,
                p.storm_n
            );
            let spid = l.server.pid().expect("server pid");
            let perf = (round == 0)
                .then(|| perf_record(l.name, l.responder_pid()))
                .flatten();
            let s0 = cpu_seconds(spid).unwrap_or(f64::NAN);
            let r0 = l.responder_pid().and_then(cpu_seconds);
            let r = storm(l.server.port(), &l.tokens, p.storm_c, p.storm_n);
            let s1 = cpu_seconds(spid).unwrap_or(f64::NAN);
            let r1 = l.responder_pid().and_then(cpu_seconds);
            drop(perf);
            l.server_cpu_s += s1 - s0;
            if let (Some(a), Some(b)) = (r0, r1) {
                l.responder_cpu_s += b - a;
            }
            l.storms.push(r);
        }
    }
    (live, errors)
}

// ---------------------------------------------------------------------------------------------
// D: memory and time to ready

struct MemPoint {
    service_accounts: usize,
    ready_ms: f64,
    list_done_ms: Option<f64>,
    rss_kib: Option<u64>,
    hwm_kib: Option<u64>,
}

fn memory(p: &Params, setup: &Setup) -> Vec<Result<MemPoint, String>> {
    let mut out = Vec::new();
    for &extra in &p.mem_sizes {
        let total = CLIENT_SAS + extra;
        eprintln!("memory: {total} ServiceAccounts");
        let t = Instant::now();
        let double = start_double(extra);
        eprintln!("  seeded the double in {:.1} s", t.elapsed().as_secs_f64());
        let server = setup.callout_server(false);
        let port = free_port();
        let started = Instant::now();
        let r = setup
            .service(&server, &double, false, port)
            .and_then(|mut g| {
                let pages = total.div_ceil(500) as u64;
                let (ready_ms, list_done_ms) = wait_ready(&mut g, port, &double, pages, started)?;
                // Let the list's garbage go and the watch settle, then read RSS.
                std::thread::sleep(Duration::from_millis(1000));
                Ok(MemPoint {
                    service_accounts: total,
                    ready_ms,
                    list_done_ms,
                    rss_kib: status_kib(g.pid(), "VmRSS"),
                    hwm_kib: status_kib(g.pid(), "VmHWM"),
                })
            });
        out.push(r.map_err(|e| format!("memory with {total} ServiceAccounts: {e}")));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// E: micro-benchmarks (in process)

/// Median and p99 of `iters` timed calls of `f`, in microseconds.
fn time_it(iters: usize, mut f: impl FnMut() -> bool) -> Result<(f64, f64), String> {
    for _ in 0..iters.min(50) {
        if !f() {
            return Err("the benchmarked call failed".into());
        }
    }
    let mut lat = Latencies::default();
    for _ in 0..iters {
        let t = Instant::now();
        let ok = f();
        lat.0.push(t.elapsed().as_secs_f64() * 1e6);
        if !ok {
            return Err("the benchmarked call failed".into());
        }
    }
    Ok((lat.quantile(0.5), lat.quantile(0.99)))
}

/// A P-256 key (ring) as JWKS plus a function minting ES256 tokens with given claims.
struct Es256 {
    key: ring::signature::EcdsaKeyPair,
    jwks: String,
}

impl Es256 {
    fn new() -> Es256 {
        use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("p256 key");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("p256 key");
        let pk = key.public_key().as_ref(); // 0x04 ‖ x ‖ y
        let b64 = |b: &[u8]| data_encoding::BASE64URL_NOPAD.encode(b);
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": "bench-es256",
            "x": b64(&pk[1..33]), "y": b64(&pk[33..65]),
        }]})
        .to_string();
        Es256 { key, jwks }
    }

    /// Re-signs the claims of an RS256 token with ES256.
    fn resign(&self, rs256_token: &str) -> String {
        let payload = rs256_token.split('.').nth(1).expect("payload");
        let header =
            data_encoding::BASE64URL_NOPAD.encode(br#"{"alg":"ES256","kid":"bench-es256"}"#);
        let input = format!("{header}.{payload}");
        let rng = ring::rand::SystemRandom::new();
        let sig = self.key.sign(&rng, input.as_bytes()).expect("sign");
        format!(
            "{input}.{}",
            data_encoding::BASE64URL_NOPAD.encode(sig.as_ref())
        )
    }
}

/// The service's own decision path, built in process as `app` builds it, against `double`
/// (ServiceAccount cache synced, issuer keys loaded). Keep the watcher until done.
fn real_decider(
    setup: &Setup,
    double: &K8sDouble,
) -> Result<(Arc<dyn Decider>, nats_k8s_callout::kube::WatcherHandle), String> {
    use nats_k8s_callout::{app, config::Config, kube::SaCache};
    let env: HashMap<String, String> = setup
        .service_env("nats://127.0.0.1:4222", double, false, free_port())
        .into_iter()
        .collect();
    let cfg = Config::from_env(&|k| env.get(k).cloned()).map_err(|e| e.to_string())?;
    let client = app::kube_client(&cfg)?;
    let (cache, watcher) = SaCache::start(client.clone(), app::cache_config(&cfg));
    if !cache.wait_synced(Duration::from_secs(30)) {
        return Err("the ServiceAccount cache did not sync".into());
    }
    let issuers = app::issuers(&cfg, &client)?;
    let store = app::key_store(&cfg, &issuers)?;
    for i in &issuers {
        store
            .refresh(i)
            .map_err(|e| format!("JWKS: {}", e.code()))?;
    }
    let d = app::decider(&cfg, issuers, store, cache)?;
    Ok((Arc::new(d), watcher))
}

/// A request as nats-server sends it (signed by a server key), optionally sealed.
fn request_payload(
    server: &KeyPair,
    server_xkey: &XKey,
    service_xkey: Option<&XKey>,
    callout_account: &str,
    token: &str,
) -> (Vec<u8>, Option<String>) {
    let mut n = AuthorizationRequest::default();
    n.server_id.id = server.public_key();
    n.server_id.name = "bench".into();
    n.server_id.version = "2.15.1".into();
    if service_xkey.is_some() {
        n.server_id.xkey = server_xkey.public_key();
    }
    n.user_nkey = KeyPair::new_user().public_key();
    n.client_info.host = "127.0.0.1".into();
    n.client_info.id = 42;
    n.client_info.kind = "Client".into();
    n.client_info.client_type = "nats".into();
    n.connect_opts.auth_token = Some(Secret::new(token.to_string()));
    n.connect_opts.protocol = 1;
    let now = unix_now();
    let mut c = Claims::new(callout_account, now, n);
    c.aud = REQUEST_AUDIENCE.into();
    c.exp = now + 3600;
    let jwt = natsjwt::encode(&mut c, server).expect("sign request");
    match service_xkey {
        Some(x) => (
            server_xkey.seal(jwt.as_bytes(), x).expect("seal"),
            Some(server_xkey.public_key()),
        ),
        None => (jwt.into_bytes(), None),
    }
}

struct Micro {
    name: &'static str,
    p50_us: f64,
    p99_us: f64,
}

fn micro(p: &Params, setup: &Setup) -> Vec<Result<Micro, String>> {
    let double = start_double(0);
    let rs_token = double.mint_token(CLIENT_NAMESPACE, "client-000", &["nats"], unix_now() + 3600);
    let es = Es256::new();
    let es_token = es.resign(&rs_token);
    let cfg = TokenConfig::new(vec![double.issuer().to_string()], vec!["nats".into()]);
    let rs_keys = KeySet::from_jwks_json(double.jwks_json().as_bytes())
        .expect("double JWKS")
        .0;
    let es_keys = KeySet::from_jwks_json(es.jwks.as_bytes())
        .expect("ES256 JWKS")
        .0;
    let lookup = |k: KeySet| -> HashMap<String, Arc<KeySet>> {
        [(double.issuer().to_string(), Arc::new(k))].into()
    };
    let rs_lookup = lookup(rs_keys);
    let es_lookup = lookup(es_keys);
    let mut out = Vec::new();
    let iters = p.micro_iters;
    let validate = |name, token: &str, keys: &HashMap<String, Arc<KeySet>>| {
        time_it(iters, || {
            token::validate::validate(token, &cfg, keys as &dyn KeyLookup, unix_now()).is_ok()
        })
        .map(|(p50_us, p99_us)| Micro {
            name,
            p50_us,
            p99_us,
        })
        .map_err(|e| format!("{name}: {e}"))
    };
    eprintln!("micro: token validation");
    out.push(validate("token_validation_rs256", &rs_token, &rs_lookup));
    out.push(validate("token_validation_es256", &es_token, &es_lookup));

    let (decider, _watcher) = match real_decider(setup, &double) {
        Ok(d) => d,
        Err(e) => {
            out.push(Err(format!("decision: {e}")));
            return out;
        }
    };
    let server = KeyPair::new_server();
    let server_x = XKey::new();
    let issuer = KeyPair::new_account();
    let service_x = XKey::new();
    for (name, xkey) in [("decision", false), ("decision_xkey", true)] {
        eprintln!("micro: {name}");
        let mut c = callout::CalloutConfig::new(
            Placement::Config {
                account: "APP".into(),
            },
            Secret::new(issuer.seed().expect("seed")),
        );
        if xkey {
            c.xkey_seed = Some(Secret::new(service_x.seed().expect("xkey seed")));
        }
        let proc = match Processor::new(&c, decider.clone(), Arc::new(SystemClock)) {
            Ok(p) => p,
            Err(e) => {
                out.push(Err(format!("{name}: {e}")));
                continue;
            }
        };
        let (payload, header) = request_payload(
            &server,
            &server_x,
            xkey.then_some(&service_x),
            &issuer.public_key(),
            &rs_token,
        );
        let r = time_it(iters, || {
            matches!(
                proc.process(header.as_deref(), &payload),
                callout::process::Outcome::Reply(_)
            )
        })
        .map(|(p50_us, p99_us)| Micro {
            name,
            p50_us,
            p99_us,
        })
        .map_err(|e| format!("{name}: {e}"));
        out.push(r);
    }

    // Where the time of one decision goes: its parts, timed alone.
    eprintln!("micro: parts of a decision");
    let (plain, _) = request_payload(&server, &server_x, None, &issuer.public_key(), &rs_token);
    let plain = String::from_utf8(plain).expect("utf8 request");
    let now = unix_now();
    let claims = callout::request::verify(&plain, Some(&issuer.public_key()), now);
    let part = |name: &'static str, r: Result<(f64, f64), String>| {
        r.map(|(p50_us, p99_us)| Micro {
            name,
            p50_us,
            p99_us,
        })
        .map_err(|e| format!("{name}: {e}"))
    };
    match claims {
        Ok(claims) => {
            let msg = vec![b'x'; 700];
            let sig = issuer.sign(&msg).expect("sign");
            out.push(part(
                "part_ed25519_sign",
                time_it(iters, || issuer.sign(&msg).is_ok()),
            ));
            out.push(part(
                "part_ed25519_verify",
                time_it(iters, || issuer.verify(&msg, &sig).is_ok()),
            ));
            // The same Ed25519 operations with ring (for comparison with nkeys' ed25519-dalek).
            let raw_seed = nkeys::decode_seed(&issuer.seed().expect("seed"))
                .expect("raw seed")
                .1;
            let ring_kp = ring::signature::Ed25519KeyPair::from_seed_unchecked(&raw_seed)
                .expect("ring ed25519 key");
            let ring_sig = ring_kp.sign(&msg);
            let ring_pub = ring::signature::UnparsedPublicKey::new(
                &ring::signature::ED25519,
                ring::signature::KeyPair::public_key(&ring_kp)
                    .as_ref()
                    .to_vec(),
            );
            out.push(part(
                "cmp_ring_ed25519_sign",
                time_it(iters, || ring_kp.sign(&msg).as_ref().len() == 64),
            ));
            out.push(part(
                "cmp_ring_ed25519_verify",
                time_it(iters, || ring_pub.verify(&msg, ring_sig.as_ref()).is_ok()),
            ));
            let user_pub = KeyPair::new_user().public_key();
            out.push(part(
                "part_nkey_public_key_parse",
                time_it(iters, || KeyPair::from_public_key(&user_pub).is_ok()),
            ));
            out.push(part(
                "part_request_verify_decode",
                time_it(iters, || {
                    callout::request::verify(&plain, Some(&issuer.public_key()), now).is_ok()
                }),
            ));
            let auth = callout::request::to_auth_request(&claims);
            out.push(part(
                "part_decide_validate_lookup_policy",
                time_it(iters, || {
                    matches!(decider.decide(&auth), Decision::Allow(_))
                }),
            ));
            let settings = PolicySettings::default();
            let sa = client_sa(0);
            out.push(part(
                "part_policy_evaluate",
                time_it(iters, || {
                    policy::evaluate(
                        &settings,
                        &sa.namespace,
                        &sa.name,
                        sa.annotations
                            .get("nats.io/allowed-pub-subjects")
                            .map(String::as_str),
                        sa.annotations
                            .get("nats.io/allowed-sub-subjects")
                            .map(String::as_str),
                    )
                    .is_ok()
                }),
            ));
            match (
                decider.decide(&auth),
                callout::Signers::new(
                    Placement::Config {
                        account: "APP".into(),
                    },
                    &issuer.seed().expect("seed"),
                    None,
                ),
            ) {
                (Decision::Allow(grant), Ok(signers)) => out.push(part(
                    "part_sign_user_jwt_and_response",
                    time_it(iters, || signers.allow(&claims, grant.clone(), now).is_ok()),
                )),
                _ => out.push(Err("part_sign_user_jwt_and_response: no grant".into())),
            }
            let boxed =
                callout::XKeyBox::from_seed(&service_x.seed().expect("seed")).expect("xkey box");
            let sealed = server_x.seal(plain.as_bytes(), &service_x).expect("seal");
            let server_pub = server_x.public_key();
            out.push(part(
                "part_xkey_open_request",
                time_it(iters, || boxed.open(&sealed, &server_pub).is_ok()),
            ));
            let resp = vec![b'r'; 1200];
            out.push(part(
                "part_xkey_seal_response",
                time_it(iters, || boxed.seal(&resp, &server_pub).is_ok()),
            ));
        }
        Err(e) => out.push(Err(format!("parts: request does not verify: {}", e.code()))),
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Output

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let nats_version = Command::new(nats_k8s_callout::testkit::nats_server::nats_server_bin())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    json!({ "nproc": nproc, "cpu": cpu, "mem_total_kib": mem_kib, "nats_server": nats_version })
}

fn f2(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "-".into()
    }
}

fn ratio(a: f64, b: f64) -> Value {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        num(a / b)
    } else {
        Value::Null
    }
}

/// Prints the A/B/C table and the ratios; returns their JSON.
fn report_variants(p: &Params, live: &[Live]) -> (Value, Value) {
    println!(
        "\nA/B/C: connects (A sequential ×{}; B storm {} clients × {} connects, {} rounds, conn/s = median round; CPU over all B rounds)",
        p.seq_n, p.storm_c, p.storm_n, p.rounds
    );
    println!(
        "| responder | A p50 ms | A p99 ms | B conn/s | B p50 ms | B p99 ms | B max ms | fail | timeout | refused | resp CPU ms/conn | server CPU ms/conn | resp/server CPU |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut vj = serde_json::Map::new();
    for v in live {
        let st = v.storm();
        let (rc, sc) = v.cpu_ms_per_connect();
        let rc = rc.unwrap_or(f64::NAN);
        println!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            v.name,
            f2(v.seq.lat.quantile(0.5)),
            f2(v.seq.lat.quantile(0.99)),
            v.connects_per_s(),
            f2(st.lat.quantile(0.5)),
            f2(st.lat.quantile(0.99)),
            f2(st.lat.max()),
            st.failed + v.seq.failed,
            st.timeouts + v.seq.timeouts,
            st.refused + v.seq.refused,
            f2(rc),
            f2(sc),
            f2(rc / sc),
        );
        vj.insert(v.name.into(), v.json());
    }
    let by_name: HashMap<&str, &Live> = live.iter().map(|l| (l.name, l)).collect();
    let cps = |n: &str| {
        by_name
            .get(n)
            .map(|v| v.connects_per_s())
            .unwrap_or(f64::NAN)
    };
    let seq50 = |n: &str| {
        by_name
            .get(n)
            .map(|v| v.seq.lat.quantile(0.5))
            .unwrap_or(f64::NAN)
    };
    let cpu_ratio = |n: &str| {
        by_name
            .get(n)
            .and_then(|v| {
                let (r, s) = v.cpu_ms_per_connect();
                r.map(|r| r / s)
            })
            .unwrap_or(f64::NAN)
    };
    let ratios = json!({
        "B_connects_per_s_ours_over_null": ratio(cps("ours"), cps("null")),
        "B_connects_per_s_ours_xkey_over_null_xkey": ratio(cps("ours_xkey"), cps("null_xkey")),
        "B_connects_per_s_ours_over_no_callout": ratio(cps("ours"), cps("no_callout")),
        "B_connects_per_s_null_over_no_callout": ratio(cps("null"), cps("no_callout")),
        "A_p50_ours_over_null": ratio(seq50("ours"), seq50("null")),
        "A_p50_ours_over_no_callout": ratio(seq50("ours"), seq50("no_callout")),
        "C_cpu_ours_over_server": num(cpu_ratio("ours")),
        "C_cpu_ours_xkey_over_server": num(cpu_ratio("ours_xkey")),
        "C_cpu_null_over_server": num(cpu_ratio("null")),
        "C_cpu_null_xkey_over_server": num(cpu_ratio("null_xkey")),
    });
    println!("\nratios (this run)");
    println!("| ratio | value | target |");
    println!("|---|---|---|");
    let target = |k: &str| match k {
        "B_connects_per_s_ours_over_null" | "B_connects_per_s_ours_xkey_over_null_xkey" => "≥ 0.90",
        "C_cpu_ours_over_server" | "C_cpu_ours_xkey_over_server" => "≤ 0.10",
        _ => "",
    };
    for (k, v) in ratios.as_object().into_iter().flatten() {
        println!(
            "| {k} | {} | {} |",
            v.as_f64().map(f2).unwrap_or("-".into()),
            target(k)
        );
    }
    (Value::Object(vj), ratios)
}

fn main() {
    let p = Params::from_args();
    let started = Instant::now();
    let mut results = BTreeMap::<String, Value>::new();
    results.insert("machine".into(), machine());
    results.insert(
        "params".into(),
        json!({
            "quick": p.quick, "sequential_n": p.seq_n, "storm_clients": p.storm_c,
            "storm_n": p.storm_n, "rounds": p.rounds, "memory_extra_service_accounts": p.mem_sizes,
            "micro_iterations": p.micro_iters,
        }),
    );

    let mut errors = Vec::new();
    let mut mem = Vec::new();
    // Every double accepts the same API token (DoubleOptions::default).
    let setup = Setup::new(p.bin_dir.clone(), &DoubleOptions::default().token);
    // E first, on a quiet process (later stages leave threads and a large heap behind).
    // Logs are formatted as in production (JSON, info) but go nowhere.
    let _ = nats_k8s_callout::logging::init_with_sink("info", "json", Box::new(std::io::sink()));
    let micros = micro(&p, &setup);
    if !p.only_micro {
        let double = start_double(0);
        let tokens = client_tokens(&double);
        let (live, errs) = run_variants(&p, &setup, &double, &tokens);
        errors.extend(errs);
        let (vj, ratios) = report_variants(&p, &live);
        results.insert("responders".into(), vj);
        results.insert("ratios".into(), ratios);
        drop(live);
        mem = memory(&p, &setup);
    }

    let mut mj = Vec::new();
    if !mem.is_empty() {
        println!("\nD: memory of the service (RSS after ready + 1 s) and time to ready");
        println!("| ServiceAccounts | RSS MiB | peak RSS MiB | start→ready ms | last list page ms | ready − last page ms |");
        println!("|---|---|---|---|---|---|");
    }
    for m in &mem {
        match m {
            Ok(m) => {
                let mib = |k: Option<u64>| k.map(|k| f2(k as f64 / 1024.0)).unwrap_or("-".into());
                println!(
                    "| {} | {} | {} | {:.0} | {} | {} |",
                    m.service_accounts,
                    mib(m.rss_kib),
                    mib(m.hwm_kib),
                    m.ready_ms,
                    m.list_done_ms
                        .map(|x| format!("{x:.0}"))
                        .unwrap_or("-".into()),
                    m.list_done_ms
                        .map(|x| format!("{:.0}", m.ready_ms - x))
                        .unwrap_or("-".into()),
                );
                mj.push(json!({
                    "service_accounts": m.service_accounts, "rss_kib": m.rss_kib,
                    "peak_rss_kib": m.hwm_kib, "start_to_ready_ms": num(m.ready_ms),
                    "list_done_ms": m.list_done_ms.map(num),
                    "ready_after_list_ms": m.list_done_ms.map(|x| num(m.ready_ms - x)),
                }));
            }
            Err(e) => errors.push(e.clone()),
        }
    }
    results.insert("memory".into(), Value::Array(mj));

    println!(
        "\nE: micro-benchmarks (in process, {} iterations)",
        p.micro_iters
    );
    println!("| benchmark | p50 µs | p99 µs |");
    println!("|---|---|---|");
    let mut ej = serde_json::Map::new();
    for m in &micros {
        match m {
            Ok(m) => {
                println!("| {} | {} | {} |", m.name, f2(m.p50_us), f2(m.p99_us));
                ej.insert(
                    m.name.into(),
                    json!({"p50_us": num(m.p50_us), "p99_us": num(m.p99_us)}),
                );
            }
            Err(e) => errors.push(e.clone()),
        }
    }
    results.insert("micro".into(), Value::Object(ej));
    results.insert("errors".into(), json!(errors));
    results.insert("elapsed_s".into(), num(started.elapsed().as_secs_f64()));

    if !errors.is_empty() {
        println!("\nerrors:");
        for e in &errors {
            println!("- {e}");
        }
    }
    if let Some(dir) = p.out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let text = serde_json::to_string_pretty(&results).expect("json");
    std::fs::write(&p.out, text + "\n")
        .unwrap_or_else(|e| panic!("write {}: {e}", p.out.display()));
    println!(
        "\nresults: {} ({:.0} s)",
        p.out.display(),
        started.elapsed().as_secs_f64()
    );
    if !errors.is_empty() {
        std::process::exit(1);
    }
}
