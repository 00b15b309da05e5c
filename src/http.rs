//! The operations HTTP endpoints, served by `tiny_http` on their own thread:
//! - `/healthz` (liveness): 200 while every registered thread heartbeat is fresh; 503 naming
//!   the threads that stopped beating for longer than their allowed silence (or died).
//! - `/readyz` (readiness): `{"ready":bool,"checks":{"<name>":{"ok":bool,"detail":"…"}}}`,
//!   503 while any check fails, and always 503 once shutdown began.
//! - `/metrics`: the global registry plus cheap process metrics, Prometheus text format 0.0.4.
//!
//! [`Health`] is the shared state the other threads feed. Checks run on the HTTP thread for
//! every `/readyz` request, so they must be cheap (read an atomic or a lock, never do I/O).
//! This module never exposes a secret: bodies hold check names, details and metric values only.

use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A readiness check: `(ok, detail)`.
pub type Check = Box<dyn Fn() -> (bool, String) + Send + Sync>;

/// Errors from starting the HTTP server.
#[derive(Debug)]
pub enum HttpError {
    /// The address could not be bound (in use, bad address, no permission).
    Bind(String),
    /// The server thread could not be started.
    Spawn(std::io::Error),
}

impl HttpError {
    pub fn code(&self) -> &'static str {
        match self {
            HttpError::Bind(_) => "http_bind",
            HttpError::Spawn(_) => "http_spawn",
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Bind(e) => write!(f, "cannot serve HTTP: {e}"),
            HttpError::Spawn(e) => write!(f, "cannot start the HTTP thread: {e}"),
        }
    }
}

impl std::error::Error for HttpError {}

struct BeatState {
    name: String,
    max_silence_ms: u64,
    /// Milliseconds since `Health::epoch` of the last beat.
    last_ms: AtomicU64,
    /// Set when the owning thread unwound with its `Heartbeat` (a panic): stale for good.
    dead: AtomicBool,
    /// Set when the `Heartbeat` was dropped normally: the thread ended on purpose.
    retired: AtomicBool,
}

/// Liveness and readiness state shared by the service's threads and the HTTP thread.
pub struct Health {
    epoch: Instant,
    checks: Mutex<Vec<(String, Arc<Check>)>>,
    beats: Mutex<Vec<Arc<BeatState>>>,
    shutting_down: AtomicBool,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("shutting_down", &self.is_shutting_down())
            .finish_non_exhaustive()
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    pub fn new() -> Health {
        Health {
            epoch: Instant::now(),
            checks: Mutex::new(Vec::new()),
            beats: Mutex::new(Vec::new()),
            shutting_down: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Adds (or replaces) the readiness check `name`.
    pub fn register_check(&self, name: &str, check: Check) {
        let mut checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        let check = Arc::new(check);
        match checks.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = check,
            None => checks.push((name.to_string(), check)),
        }
    }

    /// Registers a thread's heartbeat: liveness fails if it does not `beat()` for longer than
    /// `max_silence`. Dropping the handle normally unregisters it (the thread ended on
    /// purpose); dropping it while panicking marks the thread dead.
    pub fn heartbeat(&self, name: &str, max_silence: Duration) -> Heartbeat {
        let state = Arc::new(BeatState {
            name: name.to_string(),
            max_silence_ms: max_silence.as_millis() as u64,
            last_ms: AtomicU64::new(self.now_ms()),
            dead: AtomicBool::new(false),
            retired: AtomicBool::new(false),
        });
        self.beats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(state.clone());
        Heartbeat {
            state,
            epoch: self.epoch,
        }
    }

    /// Readiness goes false for good: the service is draining.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// The names of the threads whose heartbeats liveness watches now.
    pub fn heartbeats(&self) -> Vec<String> {
        let beats = self.beats.lock().unwrap_or_else(|p| p.into_inner());
        beats
            .iter()
            .filter(|b| !b.retired.load(Ordering::SeqCst))
            .map(|b| b.name.clone())
            .collect()
    }

    /// Liveness: `Ok` or the names of the stale threads (with how long they were silent).
    pub fn liveness(&self) -> Result<(), Vec<String>> {
        let now = self.now_ms();
        let mut beats = self.beats.lock().unwrap_or_else(|p| p.into_inner());
        beats.retain(|b| !b.retired.load(Ordering::SeqCst));
        let stale: Vec<String> = beats
            .iter()
            .filter_map(|b| {
                if b.dead.load(Ordering::SeqCst) {
                    return Some(format!("{} (thread died)", b.name));
                }
                let silent = now.saturating_sub(b.last_ms.load(Ordering::Relaxed));
                (silent > b.max_silence_ms).then(|| {
                    format!(
                        "{} (silent {} ms, allowed {} ms)",
                        b.name, silent, b.max_silence_ms
                    )
                })
            })
            .collect();
        if stale.is_empty() {
            Ok(())
        } else {
            Err(stale)
        }
    }

    /// Readiness: `(ready, JSON body)`. Runs every check (a panicking check counts as failed).
    pub fn readiness(&self) -> (bool, serde_json::Value) {
        let checks: Vec<(String, Arc<Check>)> = self
            .checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut ready = true;
        let mut body = serde_json::Map::new();
        for (name, check) in checks {
            let (ok, detail) =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (*check)()))
                    .unwrap_or_else(|_| (false, "check panicked".to_string()));
            ready &= ok;
            body.insert(name, serde_json::json!({"ok": ok, "detail": detail}));
        }
        if self.is_shutting_down() {
            ready = false;
            body.insert(
                "shutdown".to_string(),
                serde_json::json!({"ok": false, "detail": "shutting down"}),
            );
        }
        (ready, serde_json::json!({"ready": ready, "checks": body}))
    }
}

/// A thread's heartbeat handle: call [`Heartbeat::beat`] at least once per allowed silence.
/// A thread that waits (on a channel, a socket) must wait with a timeout shorter than its
/// allowed silence and beat on every wake-up, so that "idle" is never mistaken for "stuck".
pub struct Heartbeat {
    state: Arc<BeatState>,
    epoch: Instant,
}

impl std::fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeat")
            .field("name", &self.state.name)
            .finish()
    }
}

impl Heartbeat {
    pub fn beat(&self) {
        self.state
            .last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.state.dead.store(true, Ordering::SeqCst);
        } else {
            self.state.retired.store(true, Ordering::SeqCst);
        }
    }
}

/// The running HTTP server. [`HttpServer::stop`] (or drop) stops it and joins its thread.
pub struct HttpServer {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `addr` (e.g. `0.0.0.0:8080`, `127.0.0.1:0`)
/// on a new thread. Also registers the `nats_k8s_callout_build_info` gauge.
pub fn serve(addr: &str, health: Arc<Health>) -> Result<HttpServer, HttpError> {
    crate::metrics::global()
        .gauge(
            "nats_k8s_callout_build_info",
            "Build information; the value is always 1.",
            &[("version", env!("CARGO_PKG_VERSION"))],
        )
        .set(1);
    let server = tiny_http::Server::http(addr).map_err(|e| HttpError::Bind(e.to_string()))?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| HttpError::Bind("not an IP address".to_string()))?;
    let server = Arc::new(server);
    let srv = server.clone();
    let thread = std::thread::Builder::new()
        .name("http".to_string())
        .spawn(move || {
            for request in srv.incoming_requests() {
                handle(request, &health);
            }
        })
        .map_err(HttpError::Spawn)?;
    log::info!(addr:% = bound; "HTTP endpoints listening");
    Ok(HttpServer {
        server,
        addr: bound,
        thread: Some(thread),
    })
}

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

fn handle(request: tiny_http::Request, health: &Health) {
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let method_ok = matches!(
        request.method(),
        tiny_http::Method::Get | tiny_http::Method::Head
    );
    let (status, ctype, body) = if !method_ok {
        (405, TEXT, "method not allowed\n".to_string())
    } else {
        match path.as_str() {
            "/healthz" => match health.liveness() {
                Ok(()) => (200, TEXT, "ok\n".to_string()),
                Err(stale) => (503, TEXT, format!("stale threads: {}\n", stale.join(", "))),
            },
            "/readyz" => {
                let (ready, body) = health.readiness();
                (if ready { 200 } else { 503 }, JSON, format!("{body}\n"))
            }
            "/metrics" => {
                let mut out = crate::metrics::global().render();
                process_metrics(&mut out);
                (200, PROMETHEUS, out)
            }
            _ => (404, TEXT, "not found\n".to_string()),
        }
    };
    let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], ctype.as_bytes())
        .expect("static header is valid");
    let response = tiny_http::Response::from_string(body)
        .with_status_code(status)
        .with_header(header);
    if let Err(e) = request.respond(response) {
        log::debug!(error:% = e; "HTTP response not sent");
    }
}

/// Appends `process_*` metrics read from `/proc/self` (Linux; nothing elsewhere).
fn process_metrics(out: &mut String) {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the `(comm)`; utime and stime are fields 14 and 15 (1-based), starttime 22.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
            if let (Some(u), Some(s)) = (num(11), num(12)) {
                let _ = write!(
                    out,
                    "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n\
                     # TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {}\n",
                    (u + s) as f64 / ticks
                );
            }
            if let (Some(start), Some(boot)) = (num(19), boot_time()) {
                let _ = write!(
                    out,
                    "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n\
                     # TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {}\n",
                    boot as f64 + start as f64 / ticks
                );
            }
        }
    }
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
        if let Some(rss) = statm
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
        {
            let _ = write!(
                out,
                "# HELP process_resident_memory_bytes Resident memory size in bytes.\n\
                 # TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}\n",
                rss * page
            );
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        let _ = write!(
            out,
            "# HELP process_open_fds Number of open file descriptors.\n\
             # TYPE process_open_fds gauge\nprocess_open_fds {}\n",
            fds.count()
        );
    }
}

fn boot_time() -> Option<u64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_metrics_are_present_on_linux() {
        let mut s = String::new();
        process_metrics(&mut s);
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(s.contains(&format!("\n{name}")), "{name} missing in {s}");
        }
    }

    #[test]
    fn readiness_without_checks_is_ready_until_shutdown() {
        let h = Health::new();
        assert!(h.readiness().0);
        h.begin_shutdown();
        let (ready, body) = h.readiness();
        assert!(!ready);
        assert_eq!(body["checks"]["shutdown"]["ok"], false);
    }

    #[test]
    fn panicking_check_fails_readiness() {
        let h = Health::new();
        h.register_check("boom", Box::new(|| panic!("check bug")));
        let (ready, body) = h.readiness();
        assert!(!ready);
        assert_eq!(body["checks"]["boom"]["detail"], "check panicked");
    }
}
